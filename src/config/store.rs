//! Where the cache lives (`[store]`, `--store`): the local disk under the data dir (the
//! default), or an S3-compatible bucket shared by a fleet of replicas.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, ConfigError, DurationValue, Parsed, SizeValue};

/// A download lease lasts this long unless renewed (every third of it).
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The store, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// A cacache directory under the data dir.
    #[default]
    Local,
    /// A bucket (boxed: it is much larger than the default).
    S3(Box<S3Config>),
}

/// An S3-compatible bucket and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix in it (`""`: the bucket's root).
    pub prefix: String,
    /// A non-AWS endpoint URL (MinIO, Ceph RGW, SeaweedFS).
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Path-style requests (MinIO, SeaweedFS).
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Access key id (else `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret key (else `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// How long a download lease lasts unless renewed: how soon another replica takes over
    /// a blob whose downloader died.
    pub lease_ttl: Duration,
    /// Bytes of the local disk tier in front of the bucket (`None`: no tier).
    pub local_cache_size: Option<u64>,
    /// This replica's peer endpoint as the others reach it (`http://10.0.0.5:3128`), written
    /// into its download leases so that they stream a blob in flight from it.
    pub peer_advertise: Option<String>,
    /// The secret replicas show each other on the peer endpoint (`None`: no peer streaming).
    pub peer_secret: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("lease_ttl", &self.lease_ttl)
            .field("local_cache_size", &self.local_cache_size)
            .field("peer_advertise", &self.peer_advertise)
            .field("peer_secret", &self.peer_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl S3Config {
    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreLayer {
    /// `url = "s3://bucket/prefix"` (or `"local"`, the default).
    pub url: Option<String>,
    /// `endpoint = "http://127.0.0.1:8333"`
    pub endpoint: Option<String>,
    /// `region = "us-east-1"`
    pub region: Option<String>,
    /// `path_style = true`
    pub path_style: Option<bool>,
    /// `allow_http = true` (a loopback test server only)
    pub allow_http: Option<bool>,
    /// `access_key_id = "AKIA…"` (not secret; else `AWS_ACCESS_KEY_ID`)
    pub access_key_id: Option<String>,
    /// `access_key_id_env = "REGCACHE_S3_KEY_ID"`
    pub access_key_id_env: Option<String>,
    /// `secret_access_key_file = "/run/secrets/s3-secret"`
    pub secret_access_key_file: Option<PathBuf>,
    /// `secret_access_key_env = "REGCACHE_S3_SECRET"`
    pub secret_access_key_env: Option<String>,
    /// `lease_ttl = "30s"`
    pub lease_ttl: Option<Parsed<DurationValue>>,
    /// `local_cache_size = "20GiB"`: a local disk tier in front of the bucket.
    pub local_cache_size: Option<Parsed<SizeValue>>,
    /// `peer_advertise = "http://10.0.0.5:3128"`: where the other replicas reach this one.
    pub peer_advertise: Option<String>,
    /// `peer_secret_file = "/run/secrets/regcache-peer"`
    pub peer_secret_file: Option<PathBuf>,
    /// `peer_secret_env = "REGCACHE_PEER_SECRET"`
    pub peer_secret_env: Option<String>,
}

impl StoreLayer {
    /// `self` over `lower`: `self`'s values win.
    pub fn over(self, lower: StoreLayer) -> StoreLayer {
        StoreLayer {
            url: self.url.or(lower.url),
            endpoint: self.endpoint.or(lower.endpoint),
            region: self.region.or(lower.region),
            path_style: self.path_style.or(lower.path_style),
            allow_http: self.allow_http.or(lower.allow_http),
            access_key_id: self.access_key_id.or(lower.access_key_id),
            access_key_id_env: self.access_key_id_env.or(lower.access_key_id_env),
            secret_access_key_file: self.secret_access_key_file.or(lower.secret_access_key_file),
            secret_access_key_env: self.secret_access_key_env.or(lower.secret_access_key_env),
            lease_ttl: self.lease_ttl.or(lower.lease_ttl),
            local_cache_size: self.local_cache_size.or(lower.local_cache_size),
            peer_advertise: self.peer_advertise.or(lower.peer_advertise),
            peer_secret_file: self.peer_secret_file.or(lower.peer_secret_file),
            peer_secret_env: self.peer_secret_env.or(lower.peer_secret_env),
        }
    }

    /// The store.
    ///
    /// # Errors
    /// On a URL that is not `local` or `s3://BUCKET[/PREFIX]`, S3 settings without an S3 URL,
    /// or a secret that cannot be read.
    pub fn resolve(self, origin: &str) -> Result<StoreConfig, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(origin, format!("store.{key}"), msg);
        let url = self.url.unwrap_or_else(|| "local".into());
        if url == "local" {
            let set = [
                ("endpoint", self.endpoint.is_some()),
                ("region", self.region.is_some()),
                ("path_style", self.path_style.is_some()),
                ("allow_http", self.allow_http.is_some()),
                ("access_key_id", self.access_key_id.is_some()),
                ("access_key_id_env", self.access_key_id_env.is_some()),
                ("secret_access_key_file", self.secret_access_key_file.is_some()),
                ("secret_access_key_env", self.secret_access_key_env.is_some()),
                ("lease_ttl", self.lease_ttl.is_some()),
                ("local_cache_size", self.local_cache_size.is_some()),
                ("peer_advertise", self.peer_advertise.is_some()),
                ("peer_secret_file", self.peer_secret_file.is_some()),
                ("peer_secret_env", self.peer_secret_env.is_some()),
            ];
            return match set.iter().find(|(_, on)| *on) {
                Some((key, _)) => Err(err(
                    key,
                    "is an S3 setting, but the store is the local disk: set store.url = \"s3://BUCKET/PREFIX\" (--store)"
                        .into(),
                )),
                None => Ok(StoreConfig::Local),
            };
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(err(
                "url",
                format!("{url:?}: expected \"local\" or s3://BUCKET[/PREFIX]"),
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(err(
                "url",
                format!("{bucket:?}: expected a bucket name (3 to 63 lower-case letters, digits, '-' or '.')"),
            ));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(err("endpoint", format!("{e:?}: expected an http:// or https:// URL")));
        }
        let allow_http = self.allow_http.unwrap_or(false);
        if let Some(e) = &self.endpoint
            && e.starts_with("http://")
            && !allow_http
        {
            return Err(err(
                "allow_http",
                format!("the endpoint {e} is plain HTTP: set allow_http = true (--store-allow-http) to use it"),
            ));
        }
        let env = |key: &str, var: &str| {
            std::env::var(var).map_err(|_| err(key, format!("environment variable {var} is not set")))
        };
        let access_key_id = match (self.access_key_id, self.access_key_id_env) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "access_key_id",
                    "expected one of access_key_id, access_key_id_env".into(),
                ));
            }
            (Some(k), None) => Some(k),
            (None, Some(var)) => Some(env("access_key_id_env", &var)?),
            (None, None) => None,
        };
        let secret = |file: Option<PathBuf>, var: Option<String>, name: &str| {
            let (file_key, env_key) = (format!("{name}_file"), format!("{name}_env"));
            config::read_secret(file, var, (&file_key, &env_key), &err)
        };
        let secret_access_key = secret(
            self.secret_access_key_file,
            self.secret_access_key_env,
            "secret_access_key",
        )?;
        let peer_secret = secret(self.peer_secret_file, self.peer_secret_env, "peer_secret")?;
        if let Some(s) = &peer_secret
            && s.len() < 16
        {
            return Err(err(
                "peer_secret_file",
                format!("the peer secret has {} characters: expected at least 16", s.len()),
            ));
        }
        if let Some(url) = &self.peer_advertise {
            let parsed = url.parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none()
            });
            if parsed.is_none() {
                return Err(err(
                    "peer_advertise",
                    format!("{url:?}: expected http://HOST:PORT (this replica's listener as the others reach it)"),
                ));
            }
            if peer_secret.is_none() {
                return Err(err(
                    "peer_advertise",
                    "needs the shared peer secret: set store.peer_secret_file (--peer-secret-file) or store.peer_secret_env".into(),
                ));
            }
        }
        let lease_ttl = self.lease_ttl.map_or(DEFAULT_LEASE_TTL, |d| d.0.0);
        if lease_ttl < Duration::from_secs(3) {
            return Err(err(
                "lease_ttl",
                "expected at least 3s (it is renewed every third of it)".into(),
            ));
        }
        Ok(StoreConfig::S3(Box::new(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: self.endpoint,
            region: self.region,
            path_style: self.path_style.unwrap_or(false),
            allow_http,
            access_key_id,
            secret_access_key,
            lease_ttl,
            local_cache_size: self.local_cache_size.map(|s| s.0.0),
            peer_advertise: self.peer_advertise.map(|u| u.trim_end_matches('/').to_string()),
            peer_secret,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str) -> StoreLayer {
        #[derive(Deserialize)]
        struct Doc {
            store: StoreLayer,
        }
        toml::from_str::<Doc>(text).unwrap().store
    }

    #[test]
    fn local_by_default_and_s3_urls() {
        assert_eq!(StoreLayer::default().resolve("t").unwrap(), StoreConfig::Local);
        let s = layer("[store]\nurl = \"s3://regcache-cache/fleet/a/\"\nendpoint = \"http://127.0.0.1:8333\"\nallow_http = true\npath_style = true\n")
            .resolve("t")
            .unwrap();
        let StoreConfig::S3(s3) = s else { panic!("{s:?}") };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("regcache-cache", "fleet/a"));
        assert_eq!(s3.url(), "s3://regcache-cache/fleet/a");
        assert!(s3.path_style && s3.allow_http);
    }

    #[test]
    fn mistakes_name_their_key() {
        let refused = |text: &str, key: &str| {
            let e = layer(text).resolve("t").unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        };
        refused("[store]\nurl = \"gs://b\"\n", "store.url");
        refused("[store]\nurl = \"s3://B_ad\"\n", "store.url");
        refused("[store]\nendpoint = \"http://x\"\n", "store.endpoint");
        refused(
            "[store]\nurl = \"s3://bucket\"\nendpoint = \"http://127.0.0.1:1\"\n",
            "store.allow_http",
        );
        refused(
            "[store]\nurl = \"s3://bucket\"\nsecret_access_key_env = \"REGCACHE_TEST_SURELY_UNSET\"\n",
            "store.secret_access_key_env",
        );
        refused(
            "[store]\nurl = \"s3://bucket\"\npeer_advertise = \"http://10.0.0.5:3128\"\n",
            "store.peer_advertise",
        );
        refused(
            "[store]\nurl = \"s3://bucket\"\npeer_advertise = \"10.0.0.5:3128\"\n",
            "store.peer_advertise",
        );
        refused(
            "[store]\npeer_advertise = \"http://10.0.0.5:3128\"\n",
            "store.peer_advertise",
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let c = S3Config {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            allow_http: false,
            access_key_id: Some("id".into()),
            secret_access_key: Some("hunter2".into()),
            lease_ttl: DEFAULT_LEASE_TTL,
            local_cache_size: None,
            peer_advertise: Some("http://10.0.0.5:3128".into()),
            peer_secret: Some("correct-horse-battery".into()),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("correct-horse"),
            "{shown}"
        );
    }
}
