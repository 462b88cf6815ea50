//! The cache on a disk budget and across crashes: LRU eviction under `--max-size` with real
//! pulls (docker-registry upstream, skopeo), and `kill -9` in the middle of a large download.

mod support;

use std::path::Path;
use std::time::Duration;

use sha2::Digest as _;
use support::image::TestImage;
use support::{Fault, FaultRegistry, Regcache, Registry, RegistryAuth};

/// Content files under the store and their total size.
fn store_files(data_dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![data_dir.join("cache").join("content-v2")];
    while let Some(dir) = dirs.pop() {
        let Ok(list) = std::fs::read_dir(&dir) else { continue };
        for e in list.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out
}

fn store_bytes(data_dir: &Path) -> u64 {
    store_files(data_dir).iter().map(|(_, n)| n).sum()
}

/// The content file of a `sha256:` digest.
fn blob_path(data_dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir
        .join("cache/content-v2/sha256")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex[4..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_images_are_evicted_to_stay_under_max_size() {
    let w = support::PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    const MIB: u64 = 1024 * 1024;
    let images: Vec<TestImage> = (0..3).map(|_| TestImage::generate(&[3 * MIB])).collect();
    for (i, img) in images.iter().enumerate() {
        support::push(
            &registry.url(),
            &format!("team/app{i}"),
            "v1",
            img,
            None,
            &w.ca.cert_pem(),
        )
        .await
        .unwrap();
    }
    let max = 8 * MIB;
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--max-size", "8MiB"])
        .start();
    let data = proxy.data_dir().to_path_buf();
    for (i, img) in images.iter().enumerate() {
        w.pull_through(&proxy, &format!("docker://ghcr.io/team/app{i}:v1"), None, img);
        // Distinct last-use times, one second apart at least (file time resolution).
        std::thread::sleep(Duration::from_millis(1100));
    }
    let total_pulled: u64 = images.iter().map(|i| i.layers[0].size).sum();
    assert!(total_pulled > max, "the test pulls more than the budget");
    let settled = support::poll_until(Duration::from_secs(20), || {
        let n = store_bytes(&data);
        (n <= max).then_some(n)
    });
    assert!(
        settled.is_some(),
        "store stays under --max-size: {} bytes\n{}",
        store_bytes(&data),
        proxy.logs()
    );
    let layer = |i: usize| images[i].layers[0].digest.clone();
    assert!(
        blob_path(&data, &layer(2)).exists(),
        "the most recently used image is cached"
    );
    assert!(!blob_path(&data, &layer(0)).exists(), "the least recently used is gone");
    assert!(proxy.logs().contains("cache evicted least recently used content"));

    // The evicted image pulls again: a miss, then cached.
    let before = registry.count_requests("GET", &layer(0));
    w.pull_through(&proxy, "docker://ghcr.io/team/app0:v1", None, &images[0]);
    let after = support::poll_until(Duration::from_secs(5), || {
        let n = registry.count_requests("GET", &layer(0));
        (n > before).then_some(n)
    });
    assert_eq!(after, Some(before + 1), "fetched upstream again");
    assert!(
        support::poll_until(Duration::from_secs(10), || blob_path(&data, &layer(0))
            .exists()
            .then_some(()))
        .is_some(),
        "cached again"
    );
    let metrics = reqwest::get(format!("{}/metrics", proxy.proxy_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regcache_cache_evictions_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_leaves_no_partial_entry_and_the_pull_completes_on_retry() {
    support::install_crypto_provider();
    let ca = support::TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_cert(tmp.path());
    let reg = FaultRegistry::new(&ca, &["reg-a.test"]);
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let blob = reg.put_blob(data.clone());
    reg.set_fault(
        &blob,
        Fault::SlowBody {
            chunk: 256 << 10,
            every: Duration::from_millis(50),
        },
    );
    let mut p = Regcache::builder()
        .upstream_ca(&ca_file)
        .connect_to(&format!("reg-a.test:{}", reg.port()), reg.addr())
        .registry(&format!("reg-a.test:{}", reg.port()))
        .start();
    let client = |p: &Regcache| {
        let config = support::rustls_client_config(&[&p.ca_cert_pem()]).as_ref().clone();
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .proxy(reqwest::Proxy::all(p.proxy_url()).unwrap())
            .build()
            .unwrap()
    };
    let url = format!("https://reg-a.test:{}/v2/app/blobs/{blob}", reg.port());
    let c = client(&p);
    let mut res = c.get(&url).send().await.unwrap();
    let mut got = 0;
    while got < 1024 * 1024 {
        got += res.chunk().await.unwrap().expect("bytes flow").len();
    }
    p.kill();
    let data_dir = p.data_dir().to_path_buf();
    let temps: Vec<_> = std::fs::read_dir(data_dir.join("cache/tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        !temps.is_empty(),
        "the download was in progress (a temporary file exists)"
    );
    assert!(
        !blob_path(&data_dir, &blob).exists(),
        "never in the store before it is complete"
    );

    reg.clear_faults();
    p.restart();
    assert!(p.logs().contains("removed partial downloads"), "{}", p.logs());
    // Every content file in the store matches its digest (nothing partial was committed).
    for (path, _) in store_files(&data_dir) {
        let bytes = std::fs::read(&path).unwrap();
        let hex = format!("{:x}", sha2::Sha256::digest(&bytes));
        let name: String = path
            .iter()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(name, hex, "{} is intact", path.display());
    }
    let verify = support::run_cli(&["cache", "verify", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "cache verify is clean after the crash: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let c = client(&p);
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("MISS"));
    let body = res.bytes().await.unwrap();
    assert!(body.as_ref() == data.as_slice(), "the retry is complete and right");
    assert!(
        support::poll_until(Duration::from_secs(10), || blob_path(&data_dir, &blob)
            .exists()
            .then_some(()))
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_corrupt_index_is_survived_and_blobs_are_still_served_from_the_store() {
    let w = support::PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[512 * 1024, 128 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let mut proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    let data = proxy.data_dir().to_path_buf();
    let index = data.join("cache/index-v5");
    assert!(index.exists());

    // Corrupt every index bucket, then lose the index altogether.
    for round in ["corrupt", "lost"] {
        proxy.kill();
        if round == "corrupt" {
            let mut dirs = vec![index.clone()];
            while let Some(dir) = dirs.pop() {
                for e in std::fs::read_dir(&dir).unwrap().flatten() {
                    if e.file_type().unwrap().is_dir() {
                        dirs.push(e.path());
                    } else {
                        std::fs::write(e.path(), b"\x00garbage\nnot an index line\n").unwrap();
                    }
                }
            }
        } else {
            std::fs::remove_dir_all(&index).unwrap();
        }
        proxy.restart();
        let gets_before: Vec<usize> = image
            .layers
            .iter()
            .map(|l| registry.count_requests("GET", &l.digest))
            .collect();
        w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
        let gets_after: Vec<usize> = image
            .layers
            .iter()
            .map(|l| registry.count_requests("GET", &l.digest))
            .collect();
        assert_eq!(
            gets_before, gets_after,
            "{round} index: layers still served from the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_gc_evicts_down_to_the_budget_beside_a_running_server() {
    let w = support::PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let images: Vec<TestImage> = (0..2).map(|_| TestImage::generate(&[2 * 1024 * 1024])).collect();
    for (i, img) in images.iter().enumerate() {
        support::push(
            &registry.url(),
            &format!("team/gc{i}"),
            "v1",
            img,
            None,
            &w.ca.cert_pem(),
        )
        .await
        .unwrap();
    }
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    for (i, img) in images.iter().enumerate() {
        w.pull_through(&proxy, &format!("docker://ghcr.io/team/gc{i}:v1"), None, img);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let data = proxy.data_dir().to_path_buf();
    let before = store_bytes(&data);
    let data_arg = data.to_str().unwrap();
    // Everything was used within the default 10 minutes: kept.
    let out = support::run_cli(&["cache", "gc", "--data-dir", data_arg, "--max-size", "3MiB"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(store_bytes(&data), before, "recently used content is kept by default");
    let out = support::run_cli(&[
        "cache",
        "gc",
        "--data-dir",
        data_arg,
        "--max-size",
        "3MiB",
        "--keep-recent",
        "0s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("evicted ") && !stdout.contains("evicted 0 files"),
        "{stdout}"
    );
    assert!(store_bytes(&data) <= 3 * 1024 * 1024);
    assert!(
        !blob_path(&data, &images[0].layers[0].digest).exists(),
        "least recently used went"
    );
    assert!(blob_path(&data, &images[1].layers[0].digest).exists());
    // The server copes: the evicted image pulls again.
    w.pull_through(&proxy, "docker://ghcr.io/team/gc0:v1", None, &images[0]);
}
