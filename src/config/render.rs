//! `regcache config check`: the effective configuration rendered as TOML, secrets redacted.

use std::time::Duration;

use crate::config::{Config, MirrorTls};

/// The effective configuration as TOML, secrets redacted (`regcache config check`).
pub fn render(config: &Config) -> String {
    use std::fmt::Write as _;
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let dur = |d: Duration| q(&format_duration(d));
    let list = |items: Vec<String>| format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "));
    let mut out = String::new();
    let _ = writeln!(out, "listen = {}", q(&config.listen.to_string()));
    if !config.proxy_listener {
        let _ = writeln!(out, "proxy_listener = false");
    }
    let _ = writeln!(out, "data_dir = {}", q(&config.data_dir.display().to_string()));
    let _ = writeln!(out, "ca_dir = {}", q(&config.ca_dir.display().to_string()));
    let _ = writeln!(out, "non_registry = {}", q(&config.non_registry.to_string()));
    let _ = writeln!(
        out,
        "upstream_ca = {}",
        list(config.upstream_ca.iter().map(|p| p.display().to_string()).collect())
    );
    let _ = writeln!(
        out,
        "connect_to = {}",
        list(config.connect_to.iter().map(ToString::to_string).collect())
    );
    let _ = writeln!(out, "allow_push = {}", config.allow_push);
    let _ = writeln!(out, "upstream_skip_verify = {}", config.upstream_skip_verify);
    let _ = writeln!(out, "log_format = {}", q(&config.log_format.to_string()));
    let _ = writeln!(out, "shutdown_timeout = {}", dur(config.shutdown_grace));
    let a = &config.access;
    if let Some(h) = &a.htpasswd {
        let _ = writeln!(out, "auth_htpasswd = {}", q(&h.display().to_string()));
    }
    let _ = writeln!(
        out,
        "allow_clients = {}",
        list(a.allow_clients.iter().map(ToString::to_string).collect())
    );
    let _ = writeln!(out, "insecure_open_proxy = {}", a.insecure_open_proxy);
    let _ = writeln!(
        out,
        "tunnel_ports = [{}]",
        a.tunnel_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "tunnel_allow = {}",
        list(a.tunnel_allow.iter().map(ToString::to_string).collect())
    );
    if let Some((c, k)) = &config.listener_tls {
        let _ = writeln!(
            out,
            "tls_cert = {}\ntls_key = {}",
            q(&c.display().to_string()),
            q(&k.display().to_string())
        );
    }
    let _ = writeln!(
        out,
        "# intercepted and cached: {}",
        config
            .registries
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = &config.timeouts;
    let _ = writeln!(
        out,
        "\n[timeouts]\nidle = {}\nconnect = {}\nresponse = {}",
        dur(t.client_idle),
        dur(t.upstream_connect),
        dur(t.upstream_response)
    );
    let l = &config.limits;
    let _ = writeln!(
        out,
        "\n[limits]\nmax_connections = {}\nmax_header_size = {}\nmax_headers = {}\nmax_request_line = {}",
        l.max_connections,
        q(&format_size(l.max_header_bytes as u64)),
        l.max_headers,
        q(&format_size(l.max_request_line as u64))
    );
    let c = &config.cache;
    let _ = writeln!(
        out,
        "\n[cache]\ntag_ttl = {}\ntag_ttl_mode = {}\nmax_stale = {}\npublic_recheck = {}\nprivate_grace = {}",
        dur(c.tag_ttl),
        q(&c.tag_ttl_mode.to_string()),
        dur(c.max_stale),
        dur(c.public_recheck),
        dur(c.private_grace)
    );
    let _ = writeln!(
        out,
        "tag_ttl_rules = {}",
        list(
            c.tag_ttl_rules
                .iter()
                .map(|r| format!("{r} → {}", format_duration(r.ttl)))
                .collect()
        )
    );
    match config.budget.max_size {
        Some(n) => _ = writeln!(out, "max_size = {}", q(&format!("{n}B"))),
        None => _ = writeln!(out, "# max_size: no limit"),
    }
    if let Some(n) = config.budget.min_free {
        let _ = writeln!(out, "min_free = {}", q(&format!("{n}B")));
    }
    if let Some(d) = config.budget.inactive {
        let _ = writeln!(out, "inactive = {}", dur(d));
    }
    for p in &c.per_registry {
        let _ = write!(out, "\n[[registry]]\nhost = {}\n", q(&p.registry));
        if let Some(d) = p.tag_ttl {
            let _ = writeln!(out, "tag_ttl = {}", dur(d));
        }
        if let Some(d) = p.max_stale {
            let _ = writeln!(out, "max_stale = {}", dur(d));
        }
    }
    for u in &config.upstream_tls {
        let _ = write!(out, "\n[[registry]]\nhost = {}\n", q(&u.host.to_string()));
        if let Some(ca) = &u.ca {
            let _ = writeln!(out, "upstream_ca = {}", q(&ca.display().to_string()));
        }
        if u.skip_verify {
            let _ = writeln!(out, "skip_verify = true");
        }
    }
    for cr in &config.credentials {
        let _ = write!(out, "\n[[credentials]]\nregistry = {}\n", q(&cr.registry.to_string()));
        match &cr.login {
            crate::config::Login::Password { username, .. } => {
                let _ = writeln!(out, "username = {}\npassword = \"<redacted>\"", q(username));
            }
            crate::config::Login::Helper(h) => {
                let _ = writeln!(
                    out,
                    "helper = {}\nhelper_timeout = {}\nhelper_ttl = {}",
                    q(&h.program),
                    q(&format_duration(h.timeout)),
                    q(&format_duration(h.ttl))
                );
            }
        }
        if let Some(g) = &cr.repository {
            let _ = writeln!(out, "repository = {}", q(&g.text));
        }
    }
    let up = &config.upstream_proxy;
    if up.default.is_some() || !up.no_proxy.is_empty() {
        let _ = writeln!(out, "\n[upstream]");
        if let Some(p) = &up.default {
            let _ = writeln!(out, "proxy = {}", q(&p.redacted()));
        }
        if !up.no_proxy.is_empty() {
            let _ = writeln!(out, "no_proxy = {}", q(&up.no_proxy.render()));
        }
    }
    if let crate::config::StoreConfig::S3(s3) = &config.store {
        let _ = writeln!(out, "\n[store]\nurl = {}", q(&s3.url()));
        if let Some(e) = &s3.endpoint {
            let _ = writeln!(out, "endpoint = {}", q(e));
        }
        if let Some(r) = &s3.region {
            let _ = writeln!(out, "region = {}", q(r));
        }
        let _ = writeln!(
            out,
            "path_style = {}\nallow_http = {}\nlease_ttl = {}",
            s3.path_style,
            s3.allow_http,
            dur(s3.lease_ttl)
        );
        if let Some(k) = &s3.access_key_id {
            let _ = writeln!(out, "access_key_id = {}", q(k));
        }
        if let Some(n) = s3.local_cache_size {
            let _ = writeln!(out, "local_cache_size = {}", q(&format_size(n)));
        }
        if s3.secret_access_key.is_some() {
            let _ = writeln!(out, "secret_access_key = \"<redacted>\"");
        }
        if let Some(u) = &s3.peer_advertise {
            let _ = writeln!(out, "peer_advertise = {}", q(u));
        }
        if s3.peer_secret.is_some() {
            let _ = writeln!(out, "peer_secret = \"<redacted>\"");
        }
    }
    if let Some(m) = &config.mirror {
        let _ = writeln!(out, "\n[mirror]\nlisten = {}", q(&m.listen.to_string()));
        match &m.tls {
            MirrorTls::Minted(names) => {
                let _ = writeln!(out, "names = {}", list(names.clone()));
            }
            MirrorTls::Files { cert, key } => {
                let _ = writeln!(
                    out,
                    "tls_cert = {}\ntls_key = {}",
                    q(&cert.display().to_string()),
                    q(&key.display().to_string())
                );
            }
            MirrorTls::Acme(a) => {
                let _ = writeln!(
                    out,
                    "names = {}\nacme_directory = {}\nacme_renew_before = {}",
                    list(a.names.clone()),
                    q(&a.directory),
                    q(&format_duration(a.renew_before))
                );
                if let Some(e) = &a.email {
                    let _ = writeln!(out, "acme_email = {}", q(e));
                }
                if let Some(c) = &a.ca_cert {
                    let _ = writeln!(out, "acme_ca_cert = {}", q(&c.display().to_string()));
                }
            }
            MirrorTls::Plain => {
                let _ = writeln!(out, "insecure_http = true");
            }
        }
        let _ = writeln!(out, "default_registry = {}", q(&m.default_registry.to_string()));
        if let Some(h) = &m.htpasswd {
            let _ = writeln!(out, "auth_htpasswd = {}", q(&h.display().to_string()));
        }
    }
    out
}

/// `65536` → `64KiB`: the largest binary unit that divides the size.
fn format_size(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n != 0 && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// `90s` → `90s`, `300s` → `5m`: the largest unit that divides the duration.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
