//! Drop-in for rpardini/docker-registry-proxy: its environment variables, mapped to regcache's
//! own settings so that an existing deployment (compose file, Helm values) keeps working.
//!
//! Only variables that are set are mapped; each mapping is reported so `serve` can log it.
//! They form the layer just under `REGCACHE_*` variables and flags, above the config file.

use std::time::Duration;

use crate::config::{self, HostPattern, TagTtlRule};
use crate::config::{
    ConfigError, CredentialSection, DurationValue, HostPortValue, Layer, Parsed, RegistrySection, SizeValue,
};

// rpardini's own defaults, used when ENABLE_MANIFEST_CACHE=true leaves one of them unset.
const PRIMARY_REGEX: &str = "(stable|nightly|production|test)";
const PRIMARY_TIME: &str = "10d";
const SECONDARY_REGEX: &str = r"(.*)(\d|\.)+(.*)(\d|\.)+(.*)(\d|\.)+";
const SECONDARY_TIME: &str = "60d";
const DEFAULT_TIME: &str = "1h";

/// The settings these variables describe, and one line per variable saying what it became.
///
/// # Errors
/// On a value that cannot be mapped (named by variable).
pub fn layer(var: impl Fn(&str) -> Option<String>) -> Result<(Layer, Vec<String>), ConfigError> {
    let mut layer = Layer::default();
    let mut mapped = Vec::new();
    let err = |name: &str, msg: String| ConfigError::new_env(name, msg);

    if let Some(v) = var("REGISTRIES") {
        let mut hosts = Vec::new();
        for h in v.split_whitespace() {
            let pattern: HostPattern = h.parse().map_err(|e: String| err("REGISTRIES", e))?;
            hosts.push(h.to_string());
            layer.registries.push(RegistrySection::host_only(pattern));
        }
        mapped.push(format!("REGISTRIES → intercept and cache {}", hosts.join(", ")));
    }

    if let Some(v) = var("AUTH_REGISTRIES") {
        let between = var("AUTH_REGISTRIES_DELIMITER").unwrap_or_else(|| " ".into());
        let within = var("AUTH_REGISTRY_DELIMITER").unwrap_or_else(|| ":".into());
        let mut hosts = Vec::new();
        for entry in v.split(between.as_str()).map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, within.as_str());
            let (Some(host), Some(user), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err(
                    "AUTH_REGISTRIES",
                    format!("an entry is not HOST{within}USER{within}PASSWORD (AUTH_REGISTRY_DELIMITER is {within:?})"),
                ));
            };
            // rpardini names Docker Hub by its token realm; regcache by its registry host.
            let registry = if host == "auth.docker.io" {
                "registry-1.docker.io"
            } else {
                host
            };
            let registry: HostPortValue = registry.parse().map_err(|e: String| err("AUTH_REGISTRIES", e))?;
            hosts.push(format!("{} (user {user})", registry.0));
            layer.credentials.push(CredentialSection {
                registry: Parsed(registry),
                repository: None,
                username: Some(user.to_string()),
                password: Some(pass.to_string()),
                password_file: None,
                password_env: None,
                helper: None,
                helper_timeout: None,
                helper_ttl: None,
            });
        }
        mapped.push(format!("AUTH_REGISTRIES → [[credentials]] for {}", hosts.join(", ")));
    }

    match var("ENABLE_MANIFEST_CACHE").map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if v == "true" => {
            let time = |name: &str, default: &str| -> Result<Duration, ConfigError> {
                let v = var(name).unwrap_or_else(|| default.to_string());
                nginx_time(&v).map_err(|e| err(name, e))
            };
            let regex = |name: &str, default: &str| var(name).unwrap_or_else(|| default.to_string());
            let primary = (
                regex("MANIFEST_CACHE_PRIMARY_REGEX", PRIMARY_REGEX),
                time("MANIFEST_CACHE_PRIMARY_TIME", PRIMARY_TIME)?,
            );
            let secondary = (
                regex("MANIFEST_CACHE_SECONDARY_REGEX", SECONDARY_REGEX),
                time("MANIFEST_CACHE_SECONDARY_TIME", SECONDARY_TIME)?,
            );
            let default = time("MANIFEST_CACHE_DEFAULT_TIME", DEFAULT_TIME)?;
            for ((re, ttl), name) in [
                (primary, "MANIFEST_CACHE_PRIMARY_REGEX"),
                (secondary, "MANIFEST_CACHE_SECONDARY_REGEX"),
            ] {
                layer
                    .cache
                    .path_rules
                    .push(TagTtlRule::path_regex(&re, ttl).map_err(|e| err(name, e))?);
            }
            layer.cache.tag_ttl = Some(Parsed(DurationValue(default)));
            mapped.push(format!(
                "ENABLE_MANIFEST_CACHE=true, MANIFEST_CACHE_* → tag_ttl_rules {} and tag_ttl {}",
                layer
                    .cache
                    .path_rules
                    .iter()
                    .map(|r| format!("[{r} → {}]", crate::config::format_duration(r.ttl)))
                    .collect::<Vec<_>>()
                    .join(" "),
                crate::config::format_duration(default)
            ));
        }
        Some(v) if v == "false" => {
            // rpardini then sends every manifest request upstream; a HEAD per pull is the same
            // freshness at no Docker Hub quota.
            layer.cache.tag_ttl = Some(Parsed(DurationValue(Duration::ZERO)));
            mapped.push("ENABLE_MANIFEST_CACHE=false → tag_ttl 0 (every tag revalidated with a HEAD)".into());
        }
        Some(v) => return Err(err("ENABLE_MANIFEST_CACHE", format!("{v:?}: expected true or false"))),
        None => {}
    }

    if let Some(v) = var("CACHE_MAX_SIZE") {
        let size = config::parse_size(&v).map_err(|e| err("CACHE_MAX_SIZE", e))?;
        layer.cache.max_size = Some(Parsed(SizeValue(size)));
        mapped.push(format!("CACHE_MAX_SIZE → cache.max_size {size} bytes"));
    }
    if let Some(v) = var("CACHE_INACTIVE") {
        let d = nginx_time(&v).map_err(|e| err("CACHE_INACTIVE", e))?;
        layer.cache.inactive = Some(Parsed(DurationValue(d)));
        mapped.push(format!(
            "CACHE_INACTIVE → cache.inactive {}",
            crate::config::format_duration(d)
        ));
    }
    if let Some(v) = var("ALLOW_PUSH") {
        let b = boolean(&v).map_err(|e| err("ALLOW_PUSH", e))?;
        layer.allow_push = Some(b);
        mapped.push(format!("ALLOW_PUSH → allow_push = {b}"));
    }
    if let Some(v) = var("VERIFY_SSL") {
        if !boolean(&v).map_err(|e| err("VERIFY_SSL", e))? {
            // rpardini turns verification off for every upstream.
            layer.upstream_skip_verify = Some(true);
            mapped.push("VERIFY_SSL=false → upstream_skip_verify = true (dangerous)".into());
        } else {
            mapped.push("VERIFY_SSL=true → upstream certificates verified (the default)".into());
        }
    }
    Ok((layer, mapped))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?}: expected true or false")),
    }
}

/// nginx time values (`10d`, `1h`, `60d`, `1w`, `1M`, `1y`, `30s`).
fn nginx_time(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    let day = 86_400u64;
    let (num, mult) = if let Some(n) = t.strip_suffix('y') {
        (n, 365 * day)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 30 * day)
    } else if let Some(n) = t.strip_suffix('w') {
        (n, 7 * day)
    } else {
        return config::parse_duration(t);
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{v:?}: expected an nginx time like 30s, 1h, 10d, 1w, 1M or 1y"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostPort;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<(crate::config::Config, Vec<String>), ConfigError> {
        let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (layer, lines) = layer(|k| env.get(k).cloned())?;
        Ok((layer.resolve("environment")?, lines))
    }

    #[test]
    fn nothing_set_maps_nothing() {
        let (cfg, lines) = run(&[]).unwrap();
        assert!(lines.is_empty());
        assert_eq!(cfg.cache.tag_ttl, Duration::from_secs(60));
        assert!(cfg.allow_push);
    }

    #[test]
    fn every_variable_maps() {
        let (cfg, lines) = run(&[
            ("REGISTRIES", "k8s.gcr.io reg.internal:5000"),
            (
                "AUTH_REGISTRIES",
                "auth.docker.io:hubuser:hubpass;quay.io:qu:qp:with:colons",
            ),
            ("AUTH_REGISTRIES_DELIMITER", ";"),
            ("ENABLE_MANIFEST_CACHE", "true"),
            ("MANIFEST_CACHE_PRIMARY_TIME", "1w"),
            ("CACHE_MAX_SIZE", "32g"),
            ("CACHE_INACTIVE", "60d"),
            ("ALLOW_PUSH", "false"),
            ("VERIFY_SSL", "false"),
        ])
        .unwrap();
        assert_eq!(lines.len(), 7, "{lines:?}");
        assert!(cfg.is_registry(&HostPort::parse("reg.internal:5000", 443).unwrap()));
        assert_eq!(cfg.credentials.len(), 2);
        assert_eq!(cfg.credentials[0].registry.host, "registry-1.docker.io");
        assert!(
            matches!(&cfg.credentials[1].login, crate::config::Login::Password { password, .. } if password == "qp:with:colons")
        );
        assert!(!lines.iter().any(|l| l.contains("hubpass")), "{lines:?}");
        assert_eq!(
            cfg.cache.tag_ttl("docker.io", "library/nginx", "stable"),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            cfg.cache.tag_ttl("docker.io", "library/nginx", "1.25.3"),
            Duration::from_secs(60 * 86_400)
        );
        // rpardini's regexes are unanchored: "latest" contains "test", so it is primary there too.
        assert_eq!(
            cfg.cache.tag_ttl("docker.io", "library/nginx", "latest"),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            cfg.cache.tag_ttl("docker.io", "library/nginx", "edge"),
            Duration::from_secs(3600)
        );
        assert_eq!(cfg.budget.max_size, Some(32 << 30));
        assert_eq!(cfg.budget.inactive, Some(Duration::from_secs(60 * 86_400)));
        assert!(!cfg.allow_push);
        assert!(cfg.upstream_skip_verify);
    }

    #[test]
    fn manifest_cache_off_means_revalidate_every_pull() {
        let (cfg, _) = run(&[("ENABLE_MANIFEST_CACHE", "false")]).unwrap();
        assert_eq!(cfg.cache.tag_ttl, Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = run(&[("CACHE_MAX_SIZE", "lots")]).unwrap_err();
        assert_eq!(e.key, "CACHE_MAX_SIZE");
        assert_eq!(e.origin, "environment");
        let e = run(&[("AUTH_REGISTRIES", "quay.io-no-password")]).unwrap_err();
        assert_eq!(e.key, "AUTH_REGISTRIES");
        assert!(e.message.contains("HOST:USER:PASSWORD"), "{e}");
    }
}
