variable "name" {
  description = "The droplet's name."
  type        = string
  default     = "regcache"
}

variable "region" {
  description = "DigitalOcean region slug, e.g. fra1, nyc3, sgp1."
  type        = string
  default     = "fra1"
}

variable "size" {
  description = "Droplet size: the seed's $5 droplet (1 vCPU, 1 GiB) serves a team's CI."
  type        = string
  default     = "s-1cpu-1gb"
}

variable "image" {
  description = "Droplet image (Debian or Ubuntu: the package and the unit need systemd and apt)."
  type        = string
  default     = "debian-12-x64"
}

variable "ssh_key_fingerprints" {
  description = "Fingerprints or IDs of SSH keys already in the DigitalOcean account."
  type        = list(string)
}

variable "registries" {
  description = "Registries to cache beyond regcache's built-in list (HOST[:PORT] or *.DOMAIN)."
  type        = list(string)
  default     = []
}

variable "htpasswd" {
  description = "htpasswd lines (bcrypt: htpasswd -B -n USER) for clients of the proxy."
  type        = string
  sensitive   = true
}

variable "regcache_deb_url" {
  description = "URL of the regcache .deb to install (empty: install regcache_binary_url instead)."
  type        = string
  default     = "https://github.com/regcache/regcache/releases/download/v0.1.0/regcache_0.1.0-1_amd64.deb"
}

variable "regcache_binary_url" {
  description = "URL of a release binary, used when regcache_deb_url is empty."
  type        = string
  default     = ""
}

variable "allowed_client_cidrs" {
  description = "Networks allowed to reach the proxy port 3128 (your CI runners)."
  type        = list(string)
  default     = ["0.0.0.0/0", "::/0"]
}
