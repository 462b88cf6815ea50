# regcache on one DigitalOcean droplet, set up by the repository's cloud-config
# (cloud-init.yaml.tftpl, rendered by deploy/render.py from the unit and config files).

locals {
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    regcache_deb_url    = var.regcache_deb_url
    regcache_binary_url = var.regcache_binary_url
    registries          = join(",", var.registries)
    htpasswd            = var.htpasswd
  })
}

resource "digitalocean_droplet" "regcache" {
  name       = var.name
  region     = var.region
  size       = var.size
  image      = var.image
  ssh_keys   = var.ssh_key_fingerprints
  user_data  = local.user_data
  monitoring = true
}

resource "digitalocean_firewall" "regcache" {
  name        = "${var.name}-proxy"
  droplet_ids = [digitalocean_droplet.regcache.id]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = "3128"
    source_addresses = var.allowed_client_cidrs
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }

  outbound_rule {
    protocol              = "udp"
    port_range            = "53"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}
