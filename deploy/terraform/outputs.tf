output "ipv4_address" {
  description = "The droplet's public address."
  value       = digitalocean_droplet.regcache.ipv4_address
}

output "https_proxy" {
  description = "HTTPS_PROXY for clients (add user:password@ from the htpasswd logins)."
  value       = "http://${digitalocean_droplet.regcache.ipv4_address}:3128"
}

output "ca_certificate_url" {
  description = "Where clients fetch the CA to trust (docs/ca-trust.md)."
  value       = "http://${digitalocean_droplet.regcache.ipv4_address}:3128/ca.crt"
}

output "user_data" {
  description = "The rendered cloud-config (for review)."
  value       = local.user_data
  sensitive   = true
}
