//! Replicas on one S3-compatible bucket (SeaweedFS on loopback): content one replica
//! downloaded is a hit for another with an empty disk; the `cache` commands read the bucket;
//! an unreachable bucket never fails a pull.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::haproxy::Haproxy;
use support::metric_value as metric;
use support::seaweed::{SECRET_KEY, Seaweed};
use support::{Fault, FaultRegistry, PullWorld, Regcache, RegcacheBuilder, Registry, RegistryAuth, TestImage};

/// A replica caching `ghcr.io` (mapped to `upstream`) on the bucket's `prefix`, its data in
/// `data`, not started yet.
fn replica_builder(w: &PullWorld, upstream: SocketAddr, s3: &Seaweed, prefix: &str, data: &Path) -> RegcacheBuilder {
    let mut b = Regcache::builder()
        .connect_to("ghcr.io:443", upstream)
        .upstream_ca(&w.upstream_ca_file)
        .data_dir(data)
        .args(s3.store_args(prefix));
    for (k, v) in s3.env() {
        b = b.env(k, v);
    }
    b
}

/// [`replica_builder`], with `extra` flags, started.
fn replica(w: &PullWorld, upstream: SocketAddr, s3: &Seaweed, prefix: &str, data: &Path, extra: &[&str]) -> Regcache {
    replica_builder(w, upstream, s3, prefix, data).args(extra).start()
}

/// `GET http://replica/path`: the body.
async fn get(rc: &Regcache, path: &str) -> String {
    reqwest::get(format!("{}{path}", rc.proxy_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
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

    let a = replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join("a"), &[]);
    w.pull_through(&a, "docker://ghcr.io/org/app:1.0", None, &image);
    let blob_gets = ghcr.count_requests("GET", "/blobs/");
    assert!(blob_gets >= image.blob_digests().len());
    let keys = s3.keys("fleet/blobs/");
    for digest in image.blob_digests() {
        let key = format!("fleet/blobs/{}", digest.replace(':', "/"));
        assert!(keys.contains(&key), "{key} in the bucket: {keys:?}");
    }

    // The layer over 8 MiB went up while it downloaded (a multipart upload completed once
    // verified), the small blobs at commit.
    let m = get(&a, "/metrics").await;
    assert_eq!(
        metric(&m, "regcache_store_requests_total{op=\"stream\",result=\"ok\"}"),
        1,
        "{m}"
    );

    // Another replica, its own empty data dir: every blob comes from the bucket.
    let b = replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join("b"), &[]);
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
    let out = cli(&s3, "fleet", &["cache", "stats", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("s3://regcache-fleet/fleet"),
        "{text}"
    );
    // `cache rm` purges the image from the bucket: its tag record goes.
    let out = cli(&s3, "fleet", &["cache", "rm", "ghcr.io/org/app:1.0"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&s3, "fleet", &["cache", "ls", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ghcr.io/org/app"), "removed from the bucket: {text}");
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
    let rc = replica(
        &w,
        ghcr.addr(),
        &s3,
        "x",
        &w.tmp.path().join("data"),
        &["--health-interval", "1s", "--health-threshold", "2"],
    );
    let status = |rc: &Regcache| {
        let url = format!("{}/healthz", rc.proxy_url());
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let mut health = (0, String::new());
    for _ in 0..50 {
        health = status(&rc).await;
        if health.1.contains(": reachable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        health.0 == 200 && health.1.starts_with("ok\n") && health.1.contains("s3://regcache-gone/x"),
        "{health:?}"
    );
    s3.stop();
    // Two failed checks in a row (write, read, delete of a small object): 503 with the reason.
    for _ in 0..100 {
        health = status(&rc).await;
        if health.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health.0, 503, "{health:?}\n{}", rc.logs());
    assert!(
        health.1.starts_with("unhealthy\n") && health.1.contains("checks in a row failed"),
        "{health:?}"
    );
    let verbose: serde_json::Value = serde_json::from_str(&get(&rc, "/healthz?verbose").await).unwrap();
    assert_eq!(verbose["status"], "unhealthy");
    assert_eq!(verbose["checks"][0]["name"], "store");
    assert!(
        verbose["checks"][0]["consecutive_failures"].as_u64().unwrap() >= 2,
        "{verbose}"
    );
    assert_eq!(verbose["checks"][0]["threshold"], 2);
    assert!(rc.logs().contains("/healthz is 503"));
    assert!(metric(&get(&rc, "/metrics").await, "regcache_store_check_failures ") >= 2);
    // Pulls still pass through meanwhile.
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    assert!(
        ghcr.count_requests("GET", "/blobs/") >= 2 * image.blob_digests().len(),
        "each pull fetched from upstream: nothing could be cached"
    );
}

/// `ghcr.io/org/app:1.0` on an in-process upstream whose first layer trickles (so downloads
/// on several replicas overlap); returns the image and that layer's digest.
fn slow_upstream(w: &PullWorld, layer: u64) -> (FaultRegistry, TestImage, String) {
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let image = TestImage::generate(&[layer, 64 * 1024]);
    for i in 0..image.layers.len() {
        ghcr.put_blob(image.layer_bytes(i));
    }
    ghcr.put_blob(image.config.clone());
    ghcr.put_manifest("org/app", Some("1.0"), image.media_type, image.manifest.clone());
    let slow = image.layer_digests()[0].clone();
    ghcr.set_fault(
        &slow,
        Fault::SlowBody {
            chunk: 128 * 1024,
            every: Duration::from_millis(100),
        },
    );
    (ghcr, image, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_on_three_replicas_fetch_each_blob_once() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-once");
    // 4 MiB at 1.25 MiB/s: over 3 s in flight.
    let (ghcr, image, slow) = slow_upstream(&w, 4 * 1024 * 1024);
    let replicas: Vec<Regcache> = (0..3)
        .map(|i| replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join(format!("r{i}")), &[]))
        .collect();
    std::thread::scope(|s| {
        let (w, image) = (&w, &image);
        let first = &replicas[0];
        s.spawn(move || w.pull_through(first, "docker://ghcr.io/org/app:1.0", None, image));
        // The others ask while the first replica's download of the slow layer is under way.
        let started = support::poll_until(Duration::from_secs(60), || {
            (ghcr.count("GET", &format!("/blobs/{slow}")) == 1).then_some(())
        });
        assert!(started.is_some(), "the first replica never fetched the slow layer");
        for rc in &replicas[1..] {
            s.spawn(move || w.pull_through(rc, "docker://ghcr.io/org/app:1.0", None, image));
        }
    });
    for digest in image.blob_digests() {
        assert_eq!(
            ghcr.count("GET", &format!("/blobs/{digest}")),
            1,
            "{digest} fetched from upstream once for the whole fleet"
        );
    }
    let (mut won, mut followed) = (0, 0);
    for rc in &replicas {
        let m = get(rc, "/metrics").await;
        won += metric(&m, "regcache_fleet_leases_total{outcome=\"won\"}");
        followed += metric(&m, "regcache_fleet_leases_total{outcome=\"followed\"}");
        assert!(
            metric(&m, "regcache_store_requests_total{op=\"head\",result=\"ok\"}") > 0,
            "{m}"
        );
    }
    assert_eq!(
        won,
        image.blob_digests().len() as u64,
        "each blob's lease won once in the fleet"
    );
    assert!(
        followed >= 2,
        "both later replicas served the first one's download of the slow layer ({slow})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_blob_is_taken_over_and_nothing_partial_is_served() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-takeover");
    // 4 MiB at 1.25 MiB/s: over 3 s.
    let (ghcr, image, slow) = slow_upstream(&w, 4 * 1024 * 1024);
    let ttl = ["--store-lease-ttl", "3s"];
    let mut a = replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join("a"), &ttl);
    let b = replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join("b"), &ttl);

    // A starts the download (its client's pull will fail when A dies).
    let cert_dir = support::cert_dir_with(w.tmp.path(), &[&a.ca_cert_pem()]);
    let (proxy, dest) = (a.proxy_url(), w.tmp.path().join("pull-a"));
    let doomed = std::thread::spawn(move || {
        support::skopeo_copy(&proxy, &cert_dir, "docker://ghcr.io/org/app:1.0", &dest, None)
    });
    let started = support::poll_until(Duration::from_secs(30), || {
        (ghcr.count("GET", &format!("/blobs/{slow}")) == 1).then_some(())
    });
    assert!(started.is_some(), "replica a never fetched the layer:\n{}", a.logs());

    // B wants it too: it waits for A's claim; A dies mid-blob; B takes over.
    std::thread::scope(|s| {
        let pull = s.spawn(|| w.pull_through(&b, "docker://ghcr.io/org/app:1.0", None, &image));
        std::thread::sleep(Duration::from_millis(700));
        a.kill();
        pull.join().expect("the pull through replica b");
    });
    let _ = doomed.join();
    assert!(
        b.logs().contains("took over a lapsed lease"),
        "b took the claim over:\n{}",
        b.logs()
    );
    let m = get(&b, "/metrics").await;
    assert_eq!(
        metric(&m, "regcache_fleet_leases_total{outcome=\"taken_over\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        ghcr.count("GET", &format!("/blobs/{slow}")),
        2,
        "fetched again once, by the replica that took over"
    );
    // What the bucket holds is whole and right.
    let out = cli(&s3, "fleet", &["cache", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tier_serves_hits_and_rides_out_a_bucket_outage() {
    let w = PullWorld::new();
    let mut s3 = Seaweed::start("regcache-tier");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[1024 * 1024, 200 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let data = w.tmp.path().join("data");
    let rc = replica(
        &w,
        ghcr.addr(),
        &s3,
        "tiered",
        &data,
        &["--store-local-cache-size", "64MiB"],
    );
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    let blob_gets = ghcr.count_requests("GET", "/blobs/");
    for digest in image.blob_digests() {
        let file = data.join("tier").join(digest.replace(':', "-"));
        assert!(file.is_file(), "{digest} kept in the local tier");
        let key = format!("tiered/blobs/{}", digest.replace(':', "/"));
        assert!(s3.keys("tiered/blobs/").contains(&key), "and in the bucket");
    }

    // The bucket goes away: the blobs the tier holds are still hits.
    s3.stop();
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    assert_eq!(ghcr.count_requests("GET", "/blobs/"), blob_gets, "no upstream blob GET");
    for digest in image.blob_digests() {
        let hits = rc
            .logs()
            .lines()
            .filter(|l| l.contains(&format!("/blobs/{digest}")) && l.contains("cache=\"hit\""))
            .count();
        assert!(hits >= 1, "{digest} served from the tier:\n{}", rc.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_pulls_through_haproxy_over_three_replicas_fetch_each_blob_once() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-haproxy");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let mb = 1024 * 1024;
    let image = TestImage::generate(&[64 * mb, 64 * mb, 48 * mb, 24 * mb]);
    support::push(&ghcr.url(), "org/big", "1.0", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    // One CA for the fleet: the first replica makes it, the others load it.
    let ca_dir = w.tmp.path().join("ca");
    let start = |i: usize| {
        replica_builder(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join(format!("r{i}")))
            .ca_dir(&ca_dir)
            .start()
    };
    let replicas: Vec<Regcache> = (0..3).map(start).collect();
    let lb = Haproxy::start(&replicas.iter().map(Regcache::addr).collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..16 {
            let (w, image, lb, rc) = (&w, &image, &lb, &replicas[0]);
            s.spawn(move || w.pull_via(&lb.proxy_url(), rc, "docker://ghcr.io/org/big:1.0", None, image));
        }
    });
    for digest in image.blob_digests() {
        assert_eq!(
            ghcr.count_requests("GET", &format!("/blobs/{digest}")),
            1,
            "{digest}: one upstream GET for 16 pulls over 3 replicas"
        );
    }
    let served: Vec<usize> = replicas
        .iter()
        .map(|rc| rc.logs().matches("/org/big/blobs/").count())
        .collect();
    assert!(served.iter().all(|n| *n > 0), "every replica served blobs: {served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_evicts_from_the_bucket() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-evict");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[1024 * 1024, 1024 * 1024, 1024 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let data = w.tmp.path().join("data");
    let rc = replica(&w, ghcr.addr(), &s3, "fleet", &data, &[]);
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &image);
    let before = s3.keys("fleet/blobs/").len();
    assert!(before >= 4, "config and three layers in the bucket");
    let data_arg = data.to_str().unwrap();
    let gc = [
        "cache",
        "gc",
        "--data-dir",
        data_arg,
        "--max-size",
        "1500KiB",
        "--keep-recent",
        "0s",
    ];

    // Another replica holds the eviction lease: this one leaves the bucket alone.
    let lease = serde_json::json!({"holder": "other:1:0", "expires_ms": 4_102_444_800_000u64}).to_string();
    s3.put("fleet/leases/evictor", &lease);
    let out = cli(&s3, "fleet", &gc);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("another replica is evicting"),
        "{text}"
    );
    assert_eq!(
        s3.keys("fleet/blobs/").len(),
        before,
        "nothing evicted while another replica holds the turn"
    );

    // Its turn over (the lease gone): down to the budget.
    s3.delete("fleet/leases/evictor");
    let out = cli(&s3, "fleet", &gc);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("evicted"), "{text}");
    let after = s3.keys("fleet/blobs/").len();
    assert!(after < before, "evicted from the bucket: {before} → {after}\n{text}");
    assert!(s3.keys("fleet/leases/").is_empty(), "the eviction lease is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_with_the_wrong_bytes_never_appears_in_the_bucket() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-wrong");
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    // Over 8 MiB: it streams to the bucket while it downloads, as a multipart upload.
    let image = TestImage::generate(&[9 * 1024 * 1024]);
    ghcr.put_blob(image.layer_bytes(0));
    ghcr.put_blob(image.config.clone());
    ghcr.put_manifest("org/app", Some("1.0"), image.media_type, image.manifest.clone());
    let layer = image.layer_digests()[0].clone();
    ghcr.set_fault(&layer, Fault::WrongBytes);
    let rc = replica(&w, ghcr.addr(), &s3, "fleet", &w.tmp.path().join("data"), &[]);
    let cert_dir = support::cert_dir_with(w.tmp.path(), &[&rc.ca_cert_pem()]);
    let out = support::skopeo_copy(
        &rc.proxy_url(),
        &cert_dir,
        "docker://ghcr.io/org/app:1.0",
        &w.tmp.path().join("pull"),
        None,
    );
    assert!(!out.status.success(), "the wrong bytes are not accepted");
    let key = format!("fleet/blobs/{}", layer.replace(':', "/"));
    let mut ended = false;
    for _ in 0..50 {
        let m = get(&rc, "/metrics").await;
        if metric(&m, "regcache_store_requests_total{op=\"stream\",result=\"ok\"}") >= 1 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the streamed upload ended (aborted):\n{}", rc.logs());
    assert!(
        !s3.keys("fleet/blobs/").contains(&key),
        "nothing unverified under {key}"
    );
}

/// Two replicas that stream blobs in flight to each other: each listens on a port known in
/// advance and advertises it, with the fleet's shared secret.
fn peered_replicas(w: &PullWorld, upstream: SocketAddr, s3: &Seaweed) -> (Regcache, Regcache, String) {
    let secret = format!("fleet-secret-{}", support::random_hex(12));
    let secret_file = w.tmp.path().join("peer-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let ports = support::free_ports(2);
    let start = |name: &str, port: u16| {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        replica_builder(w, upstream, s3, "fleet", &w.tmp.path().join(name))
            .listen(addr)
            .args(["--store-lease-ttl", "3s", "--peer-advertise", &format!("http://{addr}")])
            .arg("--peer-secret-file")
            .arg(&secret_file)
            .start()
    };
    (start("a", ports[0]), start("b", ports[1]), secret)
}

/// A client of `rc` as a proxy, trusting its CA.
fn through(rc: &Regcache) -> reqwest::Client {
    support::regcache::client_through(rc)
}

/// `GET` of the blob `digest` of `ghcr.io/org/app` through `rc`, started.
async fn blob_through(rc: &Regcache, digest: &str) -> reqwest::Response {
    let res = through(rc)
        .get(format!("https://ghcr.io/v2/org/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", rc.logs());
    res
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_a_blob_in_flight_from_the_one_downloading_it() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-peers");
    // 4 MiB at 1.25 MiB/s: over 3 s in flight.
    let (ghcr, image, slow) = slow_upstream(&w, 4 * 1024 * 1024);
    let (a, b, secret) = peered_replicas(&w, ghcr.addr(), &s3);

    let first = tokio::spawn({
        let res = blob_through(&a, &slow).await;
        async move { res.bytes().await.unwrap() }
    });
    let started = support::poll_until(Duration::from_secs(30), || {
        (ghcr.count("GET", &format!("/blobs/{slow}")) == 1).then_some(())
    });
    assert!(started.is_some(), "replica a never fetched the layer:\n{}", a.logs());

    // b's client gets its first bytes while a is still downloading: streamed from a, not
    // waited for in the bucket.
    let mut res = blob_through(&b, &slow).await;
    let mut got = res.chunk().await.unwrap().expect("a first chunk").to_vec();
    assert_eq!(
        ghcr.completed("GET", &format!("/blobs/{slow}")),
        0,
        "b's first bytes came while a's upstream transfer was still under way"
    );
    while let Some(chunk) = res.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(sha256_hex(&got), slow, "b served the whole blob, verified");
    assert_eq!(sha256_hex(&first.await.unwrap()), slow);
    assert_eq!(
        ghcr.count("GET", &format!("/blobs/{slow}")),
        1,
        "fetched from upstream once for both"
    );
    let m = get(&b, "/metrics").await;
    assert_eq!(
        metric(&m, "regcache_fleet_leases_total{outcome=\"streamed\"}"),
        1,
        "{m}"
    );
    assert!(b.logs().contains("streaming the blob from the replica downloading it"));

    // A hit on b now, from the bucket; the bucket holds it whole.
    let again = blob_through(&b, &slow).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(sha256_hex(&again.bytes().await.unwrap()), slow);
    let out = cli(&s3, "fleet", &["cache", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The peer endpoint wants the fleet's secret, and the secret is never logged.
    let peer_url = format!("{}/_regcache/peer/blobs/{slow}", a.proxy_url());
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    for auth in [None, Some("Bearer not-the-fleet-secret")] {
        let mut req = plain.get(&peer_url);
        if let Some(v) = auth {
            req = req.header("authorization", v);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
    }
    let ok = plain
        .get(&peer_url)
        .bearer_auth(&secret)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 206);
    assert_eq!(ok.bytes().await.unwrap().len(), 10);
    for rc in [&a, &b] {
        assert!(!rc.logs().contains(&secret), "the peer secret is never logged");
    }
    let _ = image;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_source_dies_goes_on_from_where_it_stopped() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-resume");
    let (ghcr, _image, slow) = slow_upstream(&w, 4 * 1024 * 1024);
    let (mut a, b, _) = peered_replicas(&w, ghcr.addr(), &s3);

    let doomed = tokio::spawn({
        let res = blob_through(&a, &slow).await;
        async move { res.bytes().await }
    });
    let started = support::poll_until(Duration::from_secs(30), || {
        (ghcr.count("GET", &format!("/blobs/{slow}")) == 1).then_some(())
    });
    assert!(started.is_some(), "replica a never fetched the layer:\n{}", a.logs());
    let mut res = blob_through(&b, &slow).await;
    let mut got = res.chunk().await.unwrap().expect("a first chunk").to_vec();
    // a dies mid-blob; b's one response goes on (from upstream, once a's lease lapses) and
    // ends with the right bytes.
    a.kill();
    while let Some(chunk) = res.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    let _ = doomed.await;
    assert_eq!(sha256_hex(&got), slow, "b's client got the whole blob, right");
    assert!(b.logs().contains("going on from where it stopped"), "{}", b.logs());
    let gets: Vec<_> = ghcr
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&format!("/blobs/{slow}")))
        .collect();
    assert_eq!(gets.len(), 2, "fetched again once, by b: {gets:?}");
    let range = gets[1].range.clone().unwrap_or_default();
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(from > 0, "b asked upstream only for the rest: {range:?}");
    let m = get(&b, "/metrics").await;
    assert_eq!(
        metric(&m, "regcache_fleet_leases_total{outcome=\"taken_over\"}"),
        1,
        "{m}"
    );
    // b committed the blob it finished: whole and right in the bucket, a hit from now on.
    let out = cli(&s3, "fleet", &["cache", "verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let again = blob_through(&b, &slow).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_on_the_bucket_goes_by_last_use_across_the_fleet() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-lru");
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let mib = 1024 * 1024;
    let older = TestImage::generate(&[mib, mib + 1, mib + 2]);
    let newer = TestImage::generate(&[mib + 3, mib + 4, mib + 5]);
    let small = TestImage::generate(&[64 * 1024]);
    for (repo, image) in [("org/app", &older), ("org/new", &newer), ("org/small", &small)] {
        support::push(&ghcr.url(), repo, "1.0", image, None, &w.ca.cert_pem())
            .await
            .unwrap();
    }
    let data = w.tmp.path().join("data");
    let rc = replica(&w, ghcr.addr(), &s3, "fleet", &data, &[]);
    // Written first, but used last: the older image's layers must outlive the newer image's.
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &older);
    std::thread::sleep(Duration::from_millis(1100));
    w.pull_through(&rc, "docker://ghcr.io/org/new:1.0", None, &newer);
    std::thread::sleep(Duration::from_millis(1100));
    for digest in older.layer_digests() {
        let res = blob_through(&rc, &digest).await;
        assert_eq!(res.headers()["x-cache"], "HIT");
        assert_eq!(sha256_hex(&res.bytes().await.unwrap()), digest);
    }
    // A download wakes the replica's evictor, which writes the use markers it noted.
    w.pull_through(&rc, "docker://ghcr.io/org/small:1.0", None, &small);
    let marked = support::poll_until(Duration::from_secs(40), || {
        let keys = s3.keys("fleet/used/");
        older
            .layer_digests()
            .iter()
            .all(|d| keys.contains(&format!("fleet/used/{}", d.replace(':', "/"))))
            .then_some(())
    });
    assert!(marked.is_some(), "use markers: {:?}", s3.keys("fleet/used/"));

    let out = cli(
        &s3,
        "fleet",
        &[
            "cache",
            "gc",
            "--data-dir",
            data.to_str().unwrap(),
            "--max-size",
            "4MiB",
            "--keep-recent",
            "0s",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("evicted"), "{text}");
    let keys = s3.keys("fleet/blobs/");
    let held = |d: &String| keys.contains(&format!("fleet/blobs/{}", d.replace(':', "/")));
    assert!(
        older.layer_digests().iter().all(held),
        "recently used layers kept: {keys:?}"
    );
    assert!(
        !newer.layer_digests().iter().any(held),
        "least recently used layers evicted first: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_blob_streamed_between_replicas_goes_only_to_clients_upstream_accepts() {
    let w = PullWorld::new();
    let s3 = Seaweed::start("regcache-private");
    let (ghcr, _image, slow) = slow_upstream(&w, 4 * 1024 * 1024);
    ghcr.require_basic("alice", "s3cret");
    let (a, b, _) = peered_replicas(&w, ghcr.addr(), &s3);
    let url = format!("https://ghcr.io/v2/org/app/blobs/{slow}");
    let first = through(&a)
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "{}", a.logs());
    let first = tokio::spawn(first.bytes());
    let started = support::poll_until(Duration::from_secs(30), || {
        (ghcr.count("GET", &format!("/blobs/{slow}")) == 1).then_some(())
    });
    assert!(started.is_some(), "replica a never fetched the layer:\n{}", a.logs());

    // While b copies it from a, a client upstream would refuse gets nothing from b.
    let anonymous = through(&b).get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "{}", b.logs());
    let wrong = through(&b)
        .get(&url)
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "{}", b.logs());
    let allowed = through(&b)
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200, "{}", b.logs());
    assert_eq!(sha256_hex(&allowed.bytes().await.unwrap()), slow);
    assert_eq!(sha256_hex(&first.await.unwrap().unwrap()), slow);
    assert_eq!(
        ghcr.count("GET", &format!("/blobs/{slow}")),
        1,
        "fetched from upstream once"
    );
    assert!(b.logs().contains("streaming the blob from the replica downloading it"));
}
