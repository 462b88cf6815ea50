//! Real pulls through the registry cache: the distribution registry (Debian's
//! `docker-registry`) behind TLS from a test CA, skopeo through regcache trusting only
//! regcache's CA. A large image pulled again while the registry is down, twenty concurrent
//! pulls of one uncached image, and two registries whose images share a layer.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::image::{ImageSpec, TestImage};
use support::skopeo::{assert_success, verify_dir_blobs};
use support::{Regcache, Registry, RegistryAuth, cert_dir_with, manifest_digest_of_dir, skopeo_copy};

const MIB: u64 = 1024 * 1024;

type World = support::PullWorld;

fn world() -> World {
    World::new()
}

/// Pulls `src` through `proxy` into a fresh directory, checks the manifest digest and re-hashes
/// every blob; returns the directory.
fn pull_and_verify(w: &World, proxy: &Regcache, src: &str, image: &TestImage) -> PathBuf {
    w.pull_through(proxy, src, None, image)
}

/// regcache access-log lines for `host` about manifests or blobs.
fn content_lines<'a>(logs: &'a str, host: &str) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| {
            l.contains("regcache::access")
                && l.contains(&format!("host={host}"))
                && (l.contains("/manifests/") || l.contains("/blobs/"))
        })
        .collect()
}

/// Waits until the registry's access log shows at least one GET of each digest, then a little
/// longer for stragglers; returns the GET count per digest.
fn blob_get_counts(registry: &Registry, digests: &[String]) -> Vec<(String, usize)> {
    for d in digests {
        support::poll_until(Duration::from_secs(10), || {
            (registry.count_requests("GET", d) >= 1).then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    digests
        .iter()
        .map(|d| (d.clone(), registry.count_requests("GET", d)))
        .collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Files in the cache's content store whose content hashes to `digest`.
fn content_files_with_digest(data_dir: &Path, digest: &str) -> Vec<PathBuf> {
    files_under(&data_dir.join("cache/content-v2"))
        .into_iter()
        .filter(|p| support::sha256_digest_of_file(p).ok().as_deref() == Some(digest))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_image_is_pulled_again_from_cache_while_the_registry_is_down() {
    let w = world();
    let mut registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    // Four layers, 102 MiB of payload in all.
    let image = TestImage::generate(&[40 * MIB, 30 * MIB, 20 * MIB, 12 * MIB]);
    assert!(image.total_blob_size() >= 100 * 1000 * 1000);
    support::push(&registry.url(), "team/big", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let first = pull_and_verify(&w, &proxy, "docker://ghcr.io/team/big:v1", &image);
    let counts = blob_get_counts(&registry, &image.blob_digests());
    for (d, n) in &counts {
        assert_eq!(*n, 1, "blob {d} fetched once upstream");
    }

    registry.stop();
    let seen = registry.access_log().len();
    let offset = proxy.logs().len();
    let by_tag = pull_and_verify(&w, &proxy, "docker://ghcr.io/team/big:v1", &image);
    let by_digest = pull_and_verify(
        &w,
        &proxy,
        &format!("docker://ghcr.io/team/big@{}", image.manifest_digest),
        &image,
    );
    for dir in [&by_tag, &by_digest] {
        assert_eq!(manifest_digest_of_dir(dir), manifest_digest_of_dir(&first));
        assert_eq!(support::dir_blob_digests(dir), support::dir_blob_digests(&first));
    }
    assert_eq!(registry.access_log().len(), seen, "the registry saw nothing new");

    // Every manifest and blob request of the second pulls was a cache hit.
    // Access lines are written when a response ends and read from a pipe: wait for all.
    support::poll_until(Duration::from_secs(5), || {
        let logs = proxy.logs();
        let lines = content_lines(&logs[offset..], "ghcr.io:443");
        image
            .blob_digests()
            .iter()
            .all(|d| lines.iter().filter(|l| l.contains(d.as_str())).count() >= 2)
            .then_some(())
    });
    let logs = proxy.logs();
    let lines = content_lines(&logs[offset..], "ghcr.io:443");
    assert!(
        lines.iter().any(|l| l.contains("/manifests/v1")),
        "manifest by tag requested: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("/manifests/{}", image.manifest_digest))),
        "manifest by digest requested: {lines:#?}"
    );
    for d in image.blob_digests() {
        assert!(
            lines.iter().filter(|l| l.contains(&d)).count() >= 2,
            "blob {d} requested by both pulls: {lines:#?}"
        );
    }
    let misses: Vec<&&str> = lines.iter().filter(|l| !l.contains("cache=\"hit\"")).collect();
    assert!(misses.is_empty(), "not served as cache=\"hit\": {misses:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_pulls_fetch_each_blob_once() {
    let w = world();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[4 * MIB, 2 * MIB, 256 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let cert_dir = cert_dir_with(w.tmp.path(), &[&proxy.ca_cert_pem()]);

    let pulls: Vec<_> = (0..20)
        .map(|i| {
            let proxy_url = proxy.proxy_url();
            let cert_dir = cert_dir.clone();
            let dest = w.tmp.path().join(format!("pull-{i}"));
            std::thread::spawn(move || {
                let out = skopeo_copy(&proxy_url, &cert_dir, "docker://ghcr.io/team/app:v1", &dest, None);
                (out, dest)
            })
        })
        .collect();
    let mut expected = image.blob_digests();
    expected.sort();
    for (i, pull) in pulls.into_iter().enumerate() {
        let (out, dest) = pull.join().unwrap();
        if !out.status.success() {
            eprintln!("----- regcache -----\n{}", proxy.logs());
        }
        assert_success(&out, &format!("concurrent pull {i}"));
        assert_eq!(manifest_digest_of_dir(&dest), image.manifest_digest, "pull {i}");
        assert_eq!(verify_dir_blobs(&dest), expected, "pull {i}: blobs re-hashed");
    }
    for (d, n) in blob_get_counts(&registry, &image.blob_digests()) {
        assert_eq!(n, 1, "blob {d}: one upstream GET for twenty pulls");
    }
}

/// An image whose first layer is `shared.layers[0]` and whose other layers come from `own`.
fn image_sharing_first_layer(shared: &TestImage, own: &TestImage) -> TestImage {
    let mut image = own.clone();
    image.layers = std::iter::once(shared.layers[0].clone())
        .chain(own.layers.iter().cloned())
        .collect();
    let diff_ids: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    image.config = serde_json::to_vec(&serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": image.arch,
        "os": image.os,
        "config": { "Labels": { "regcache.test.nonce": support::random_hex(8) } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": image.layers.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>(),
    }))
    .unwrap();
    image.config_digest = support::sha256_digest(&image.config);
    let original: serde_json::Value = serde_json::from_slice(&own.manifest).unwrap();
    image.manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image.media_type,
        "config": {
            "mediaType": original["config"]["mediaType"],
            "digest": image.config_digest,
            "size": image.config.len(),
        },
        "layers": image.layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    image.manifest_digest = support::sha256_digest(&image.manifest);
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_same_repo_and_tag_keep_their_manifests_and_share_a_layer_once() {
    let w = world();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let quay = Registry::start(&w.ca, &["quay.io"], RegistryAuth::None);
    let a = TestImage::generate(&[MIB, 512 * 1024]);
    let b = image_sharing_first_layer(&a, &ImageSpec::new(&[256 * 1024]).build());
    let shared = a.layers[0].digest.clone();
    assert_eq!(b.layers[0].digest, shared);
    assert_ne!(a.manifest_digest, b.manifest_digest);
    support::push(&ghcr.url(), "team/app", "v1", &a, None, &w.ca.cert_pem())
        .await
        .unwrap();
    support::push(&quay.url(), "team/app", "v1", &b, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .connect_to("quay.io:443", quay.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    pull_and_verify(&w, &proxy, "docker://ghcr.io/team/app:v1", &a);
    pull_and_verify(&w, &proxy, "docker://quay.io/team/app:v1", &b);
    // Again, from the cache: still each its own.
    pull_and_verify(&w, &proxy, "docker://ghcr.io/team/app:v1", &a);
    pull_and_verify(&w, &proxy, "docker://quay.io/team/app:v1", &b);

    // The shared layer is stored once, under content-v2/sha256/.
    let files = support::poll_until(Duration::from_secs(5), || {
        let files = content_files_with_digest(proxy.data_dir(), &shared);
        (!files.is_empty()).then_some(files)
    })
    .unwrap_or_default();
    assert_eq!(files.len(), 1, "shared layer {shared} stored once: {files:?}");
    let hex = shared.trim_start_matches("sha256:");
    let expected = proxy
        .data_dir()
        .join("cache/content-v2/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex[4..]);
    assert_eq!(files[0], expected, "content-addressed by its sha256");
    for own in [&a.layers[1].digest, &b.layers[1].digest] {
        assert_eq!(content_files_with_digest(proxy.data_dir(), own).len(), 1, "{own}");
    }
}
