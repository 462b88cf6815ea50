//! Flags choosing the store (`--store`, `--store-*`), shared by `serve` and the `cache`
//! commands that read it.

use clap::Args;

use crate::config::{DurationValue, Parsed, SizeValue, StoreLayer};

/// Where the cache lives (`[store]` in the config file).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
    /// The store: `local` (DATA_DIR/cache) or an S3-compatible bucket `s3://BUCKET[/PREFIX]`
    /// shared by replicas; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    /// [default: local].
    #[arg(long = "store", env = "REGCACHE_STORE", value_name = "URL")]
    pub store_url: Option<String>,

    /// S3 endpoint of a non-AWS server (MinIO, Ceph RGW, SeaweedFS).
    #[arg(long = "store-endpoint", env = "REGCACHE_STORE_ENDPOINT", value_name = "URL")]
    pub store_endpoint: Option<String>,

    /// S3 region [default: us-east-1].
    #[arg(long = "store-region", env = "REGCACHE_STORE_REGION", value_name = "REGION")]
    pub store_region: Option<String>,

    /// Path-style S3 requests (ENDPOINT/BUCKET/KEY), as MinIO and SeaweedFS want.
    #[arg(long = "store-path-style", env = "REGCACHE_STORE_PATH_STYLE")]
    pub store_path_style: bool,

    /// Allow a plain-HTTP S3 endpoint (a server on loopback).
    #[arg(long = "store-allow-http", env = "REGCACHE_STORE_ALLOW_HTTP")]
    pub store_allow_http: bool,

    /// How long a replica's claim to download a blob lasts unless renewed: how soon another
    /// replica takes over a download whose replica died [default: 30s].
    #[arg(long = "store-lease-ttl", env = "REGCACHE_STORE_LEASE_TTL", value_name = "DURATION")]
    pub store_lease_ttl: Option<DurationValue>,

    /// A local disk tier of this size in front of the bucket (DATA_DIR/tier, least recently
    /// used dropped first): hits cost no bucket transfer [default: none].
    #[arg(
        long = "store-local-cache-size",
        env = "REGCACHE_STORE_LOCAL_CACHE_SIZE",
        value_name = "SIZE"
    )]
    pub store_local_cache_size: Option<SizeValue>,

    /// This replica's listener as the other replicas reach it (`http://10.0.0.5:3128`): they
    /// stream a blob it is downloading from it instead of waiting for the bucket; needs
    /// --peer-secret-file [default: none, followers wait for the bucket].
    #[arg(long = "peer-advertise", env = "REGCACHE_PEER_ADVERTISE", value_name = "URL")]
    pub peer_advertise: Option<String>,

    /// A file holding the secret every replica of the fleet shares for the peer endpoint
    /// (at least 16 characters).
    #[arg(long = "peer-secret-file", env = "REGCACHE_PEER_SECRET_FILE", value_name = "FILE")]
    pub peer_secret_file: Option<std::path::PathBuf>,
}

impl StoreArgs {
    /// What these flags set, as a configuration layer.
    pub fn layer(&self) -> StoreLayer {
        StoreLayer {
            url: self.store_url.clone(),
            endpoint: self.store_endpoint.clone(),
            region: self.store_region.clone(),
            path_style: self.store_path_style.then_some(true),
            allow_http: self.store_allow_http.then_some(true),
            lease_ttl: self.store_lease_ttl.map(Parsed),
            local_cache_size: self.store_local_cache_size.map(Parsed),
            peer_advertise: self.peer_advertise.clone(),
            peer_secret_file: self.peer_secret_file.clone(),
            ..StoreLayer::default()
        }
    }
}
