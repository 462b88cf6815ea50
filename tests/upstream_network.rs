//! Reaching upstream from real networks: a parent proxy (Debian's squid, whose own hosts file
//! is the only way to the registry's name), docker credential helpers (a helper program this
//! test writes, against a registry that accepts only the current secret), and Happy Eyeballs
//! (a name with an IPv6 address that never answers and an IPv4 one that does).

mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::squid::{Squid, SquidOptions};
use support::{FaultRegistry, PullWorld, Regcache, Registry, RegistryAuth, TestImage};

/// A loopback address of the test's own, so that port 443 is free on it.
fn own_loopback_ip() -> std::net::IpAddr {
    let r = support::random_hex(2);
    let b = u8::from_str_radix(&r[..2], 16).unwrap();
    let c = u8::from_str_radix(&r[2..], 16).unwrap();
    std::net::IpAddr::from([127, 77, b, c.max(2)])
}

fn through(rc: &Regcache) -> reqwest::Client {
    support::regcache::client_through(rc)
}

/// Connections regcache opened through its parent proxy (its `/metrics`).
async fn parent_connections(rc: &Regcache) -> u64 {
    let text = reqwest::get(format!("{}/metrics", rc.proxy_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::metric_value(
        &text,
        "regcache_upstream_connections_total{route=\"parent\",result=\"ok\"}",
    )
}

/// A raw `CONNECT authority` to `proxy`: the status line and body of its answer.
fn raw_connect(proxy: SocketAddr, authority: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_whose_only_way_out_is_a_parent_proxy_goes_through_it_and_a_cached_pull_does_not() {
    let w = PullWorld::new();
    let ip = own_loopback_ip();
    let registry = Registry::builder(&w.ca)
        .names(&["ghcr.io", "tunnel.test"])
        .bind(SocketAddr::new(ip, 443))
        .auth(RegistryAuth::None)
        .start();
    let image = TestImage::generate(&[2 * 1024 * 1024, 300 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    // Only squid knows where ghcr.io is: regcache has no --connect-to for it, and the closed
    // network has no DNS.
    let squid = Squid::start(SquidOptions {
        hosts: vec![
            (ip.to_string(), "ghcr.io".into()),
            (ip.to_string(), "tunnel.test".into()),
        ],
        login: Some(("corp".into(), "pr0xy-pass".into())),
        denied: vec![".denied.test".into()],
    });
    let mut proxy = Regcache::builder()
        .arg("--upstream-proxy")
        .arg(squid.url(Some(("corp", "pr0xy-pass"))))
        .upstream_ca(&w.upstream_ca_file)
        .arg("--tag-ttl")
        .arg("1h")
        .start();

    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    let blob_gets = registry.count_requests("GET", &image.layers[0].digest);
    assert_eq!(blob_gets, 1, "{}", proxy.logs());
    let opened = parent_connections(&proxy).await;
    assert!(opened >= 1, "{}", proxy.logs());

    // The second pull is all cache hits: no new upstream connection, so no CONNECT at the
    // parent (its pooled ones serve the /v2/ ping).
    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    assert_eq!(parent_connections(&proxy).await, opened);
    assert_eq!(registry.count_requests("GET", &image.layers[0].digest), blob_gets);

    // squid logs a CONNECT when its tunnel closes; regcache's pooled ones close as it stops:
    // one CONNECT per upstream connection.
    proxy.terminate(Duration::from_secs(20));
    let logged = support::poll_until(Duration::from_secs(10), || {
        (squid.connects("ghcr.io:443", 200) as u64 == opened).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        logged.is_some() && squid.connects("ghcr.io:443", 200) as u64 == opened,
        "{opened} connections through the parent:\n{}",
        squid.logs()
    );
    proxy.restart();

    // A tunnel to a non-registry host goes through the parent too.
    let tunnelled = support::reqwest_builder(&[&w.ca.cert_pem()])
        .proxy(reqwest::Proxy::all(proxy.proxy_url()).unwrap())
        .build()
        .unwrap()
        .get("https://tunnel.test/v2/")
        .send()
        .await
        .unwrap();
    assert_eq!(tunnelled.status(), 200);
    drop(tunnelled);
    proxy.terminate(Duration::from_secs(20));
    let through_parent = support::poll_until(Duration::from_secs(10), || {
        (squid.connects("tunnel.test:443", 200) == 1).then_some(())
    });
    assert!(through_parent.is_some(), "{}", squid.logs());
    proxy.restart();

    // The parent's refusal reaches the client as a 502 naming the parent and its reason.
    let (status, body) = raw_connect(proxy.addr(), "www.denied.test:443");
    assert!(status.contains(" 502 "), "{status}\n{body}");
    assert!(
        body.contains(&format!(
            "parent proxy http://{} refused CONNECT www.denied.test:443: HTTP/1.1 403 Forbidden",
            squid.addr()
        )),
        "{body}"
    );
    let logs = proxy.logs();
    assert!(
        !logs.contains("pr0xy-pass"),
        "the proxy password is never logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_proxy_that_wants_another_login_is_a_502_with_its_407() {
    let w = PullWorld::new();
    let squid = Squid::start(SquidOptions {
        hosts: vec![("127.0.0.1".into(), "ghcr.io".into())],
        login: Some(("corp".into(), "right".into())),
        denied: vec![],
    });
    let proxy = Regcache::builder()
        .arg("--upstream-proxy")
        .arg(squid.url(Some(("corp", "wrong-pass"))))
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let res = through(&proxy)
        .get("https://ghcr.io/v2/team/app/manifests/v1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("refused CONNECT ghcr.io:443: HTTP/1.1 407 Proxy Authentication Required"),
        "{body}"
    );
    assert!(squid.connects("ghcr.io:443", 407) >= 1, "{}", squid.logs());
    assert!(!proxy.logs().contains("wrong-pass"));
}

/// A docker credential helper: answers `Username` ci-bot and the secret in `dir/secret`,
/// records each server it is asked for in `dir/calls`, and fails or hangs as `dir/mode` says.
fn write_helper(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("docker-credential-test");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread server\necho \"$server\" >> {d}/calls\n\
             case \"$(cat {d}/mode)\" in\n  fail) echo 'credentials not found in native keychain'; exit 1;;\n  \
             hang) exec sleep 60;;\nesac\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"ci-bot\",\"Secret\":\"%s\"}}\\n' \"$server\" \"$(cat {d}/secret)\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("mode"), "ok").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_helper_is_asked_once_again_when_its_secret_is_rotated_and_its_failures_are_502s() {
    let w = PullWorld::new();
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let image = TestImage::generate(&[64 * 1024, 32 * 1024, 16 * 1024, 8 * 1024]);
    let layers: Vec<String> = (0..image.layers.len())
        .map(|i| ghcr.put_blob(image.layer_bytes(i)))
        .collect();
    ghcr.put_blob(image.config.clone());
    ghcr.put_manifest("org/app", Some("1.0"), image.media_type, image.manifest.clone());
    ghcr.require_basic("ci-bot", "secret-one");
    let dir = tempfile::tempdir().unwrap();
    let helper = write_helper(dir.path());
    std::fs::write(dir.path().join("secret"), "secret-one").unwrap();
    let config = dir.path().join("regcache.toml");
    std::fs::write(
        &config,
        format!(
            "[[credentials]]\nregistry = \"ghcr.io\"\nhelper = \"{}\"\nhelper_timeout = \"2s\"\n",
            helper.display()
        ),
    )
    .unwrap();
    let proxy = Regcache::builder()
        .arg("--config")
        .arg(&config)
        .connect_to("ghcr.io:443", ghcr.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let calls = || std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    let get = |path: String| {
        let c = through(&proxy);
        async move {
            c.get(format!("https://ghcr.io/v2/org/app/{path}"))
                .send()
                .await
                .unwrap()
        }
    };

    let m = get("manifests/1.0".into()).await;
    assert_eq!(m.status(), 200, "{}", proxy.logs());
    let b = get(format!("blobs/{}", layers[0])).await;
    assert_eq!(b.status(), 200);
    assert_eq!(calls(), "ghcr.io\n", "asked once, its answer reused");

    // Rotated: the remembered secret is refused, the helper is asked again, the pull goes on.
    ghcr.require_basic("ci-bot", "secret-two");
    std::fs::write(dir.path().join("secret"), "secret-two").unwrap();
    let b = get(format!("blobs/{}", layers[1])).await;
    assert_eq!(b.status(), 200, "{}", proxy.logs());
    assert_eq!(calls().lines().count(), 2);

    // A failing helper: a 502 saying so, and one clear log line.
    ghcr.require_basic("ci-bot", "secret-three");
    std::fs::write(dir.path().join("mode"), "fail").unwrap();
    let b = get(format!("blobs/{}", layers[2])).await;
    assert_eq!(b.status(), 502);
    let body = b.text().await.unwrap();
    assert!(body.contains("credentials not found in native keychain"), "{body}");
    assert!(proxy.wait_for_log("credential helper gave no login", Duration::from_secs(5)));

    // A helper that hangs is killed at its timeout: a 502, not a hang.
    std::fs::write(dir.path().join("mode"), "hang").unwrap();
    let started = Instant::now();
    let b = get(format!("blobs/{}", layers[3])).await;
    assert_eq!(b.status(), 502);
    let body = b.text().await.unwrap();
    assert!(body.contains("no answer within 2s; killed"), "{body}");
    eprintln!("hanging helper answered in {:?}", started.elapsed());

    // Back to working: asked again, served.
    std::fs::write(dir.path().join("secret"), "secret-three").unwrap();
    std::fs::write(dir.path().join("mode"), "ok").unwrap();
    let b = get(format!("blobs/{}", layers[3])).await;
    assert_eq!(b.status(), 200, "{}", proxy.logs());
    let logs = proxy.logs();
    for s in ["secret-one", "secret-two", "secret-three"] {
        assert!(!logs.contains(s), "{s} is never logged");
    }
}

/// Holds `[::1]:port` so that connecting to it never completes: a listener whose accept queue
/// is full drops every further SYN, as an unroutable IPv6 path does. `None` where `::1` cannot
/// be bound (a machine without IPv6 loopback).
fn blackhole_v6(port: u16) -> Option<(tokio::net::TcpListener, Vec<std::net::TcpStream>)> {
    let socket = tokio::net::TcpSocket::new_v6().ok()?;
    socket
        .bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        .ok()?;
    let listener = socket.listen(0).unwrap();
    let target = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let mut held = Vec::new();
    // Fill the queue: the connections that still complete are kept open, never accepted.
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    Some((listener, held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_dead_ipv6_address_falls_back_to_ipv4() {
    const TEST: &str = "upstream_network::a_name_with_a_dead_ipv6_address_falls_back_to_ipv4";
    if !support::skip::private_mount_namespace(TEST, "regcache reads a private /etc/hosts") {
        return;
    }
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[256 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let Some(_held) = blackhole_v6(registry.port()) else {
        support::skip::skip(TEST, "needs an IPv6 loopback address (::1 cannot be bound here)");
        return;
    };
    let probe = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, registry.port())),
        Duration::from_secs(2),
    );
    assert!(
        probe.is_err(),
        "the IPv6 address must not answer for this test to mean anything"
    );

    // dual.test has both: the system resolver (a private /etc/hosts) gives IPv6 first.
    let hosts = w.tmp.path().join("hosts");
    std::fs::write(&hosts, "::1 dual.test\n127.0.0.1 dual.test localhost\n").unwrap();
    // A 60 s connect timeout: trying the addresses one after another would wait 30 s on ::1.
    let proxy = Regcache::builder()
        .hosts_file(&hosts)
        .arg("--connect-to")
        .arg(format!("ghcr.io:443=dual.test:{}", registry.port()))
        .arg("--connect-timeout")
        .arg("60s")
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let started = Instant::now();
    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    let took = started.elapsed();
    eprintln!("pull with a dead IPv6 address took {took:?}");
    // Not a speed target: the bound is far below the 30 s a sequential dial would hang.
    assert!(
        took < Duration::from_secs(20),
        "IPv4 was not tried while IPv6 hung: {took:?}"
    );
}
