//! Replicas on one S3-compatible bucket (SeaweedFS on loopback): content one replica
//! downloaded is a hit for another with an empty disk; the `cache` commands read the bucket;
//! an unreachable bucket never fails a pull.

mod support;

use std::path::Path;

use support::seaweed::{SECRET_KEY, Seaweed};
use support::{PullWorld, Regcache, Registry, RegistryAuth, TestImage};

/// A replica caching `ghcr.io` (mapped to `ghcr`) on the bucket's `prefix`.
fn replica(w: &PullWorld, ghcr: &Registry, s3: &Seaweed, prefix: &str, data: &Path) -> Regcache {
    let mut b = Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .upstream_ca(&w.upstream_ca_file)
        .data_dir(data)
        .args(s3.store_args(prefix));
    for (k, v) in s3.env() {
        b = b.env(k, v);
    }
    b.start()
}

fn cli(s3: &Seaweed, prefix: &str, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(s3.store_args(prefix));
    support::regcache::run_cli_with_env(&all, &s3.env())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_with_an_empty_disk_serves_from_the_bucket() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-fleet");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    // One layer over the 8 MiB part size: it goes up as a multipart upload.
    let image = TestImage::generate(&[9 * 1024 * 1024 + 123, 300 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let a = replica(&w, &ghcr, &s3, "fleet", &w.tmp.path().join("a"));
    w.pull_through(&a, "docker://ghcr.io/org/app:1.0", None, &image);
    let blob_gets = ghcr.count_requests("GET", "/blobs/");
    assert!(blob_gets >= image.blob_digests().len());
    let keys = s3.keys("fleet/blobs/");
    for digest in image.blob_digests() {
        let key = format!("fleet/blobs/{}", digest.replace(':', "/"));
        assert!(keys.contains(&key), "{key} in the bucket: {keys:?}");
    }

    // Another replica, its own empty data dir: every blob comes from the bucket.
    let b = replica(&w, &ghcr, &s3, "fleet", &w.tmp.path().join("b"));
    w.pull_through(&b, "docker://ghcr.io/org/app:1.0", None, &image);
    assert_eq!(
        ghcr.count_requests("GET", "/blobs/"),
        blob_gets,
        "no upstream blob GET for the second replica"
    );
    for digest in image.blob_digests() {
        assert!(
            b.logs()
                .lines()
                .any(|l| l.contains(&format!("/blobs/{digest}")) && l.contains("cache=\"hit\"")),
            "{digest} a hit on replica b:\n{}",
            b.logs()
        );
    }
    for rc in [&a, &b] {
        assert!(!rc.logs().contains(SECRET_KEY), "the S3 secret is never logged");
    }

    // The cache commands read the bucket.
    let out = cli(&s3, "fleet", &["cache", "ls", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("ghcr.io/org/app") && text.contains(&image.manifest_digest),
        "{text}"
    );
    let out = cli(&s3, "fleet", &["cache", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_passes_pulls_through() {
    let w = PullWorld::new();
    let mut s3 = Seaweed::start("regcache-gone");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[200 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let rc = replica(&w, &ghcr, &s3, "x", &w.tmp.path().join("data"));
    s3.stop();
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    assert!(
        ghcr.count_requests("GET", "/blobs/") >= 2 * image.blob_digests().len(),
        "each pull fetched from upstream: nothing could be cached"
    );
}
