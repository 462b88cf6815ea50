//! `regcache cache stats | ls | rm | verify` and the cache admin API, against a running server
//! on the same data directory: the real distribution registry upstream, skopeo pulling through
//! regcache, the CLI as a separate process.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::image::TestImage;
use support::{Regcache, Registry, RegistryAuth, run_cli};

type World = support::PullWorld;

/// An upstream registry holding `team/app:v1` and `team/web:v2`, and regcache in front of it.
struct Setup {
    w: World,
    registry: Registry,
    proxy: Regcache,
    app: TestImage,
    web: TestImage,
}

async fn setup() -> Setup {
    let w = World::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let app = TestImage::generate(&[300 * 1024, 70 * 1024]);
    let web = TestImage::generate(&[200 * 1024]);
    for (repo, tag, image) in [("team/app", "v1", &app), ("team/web", "v2", &web)] {
        support::push(&registry.url(), repo, tag, image, None, &w.ca.cert_pem())
            .await
            .unwrap();
    }
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    Setup {
        w,
        registry,
        proxy,
        app,
        web,
    }
}

impl Setup {
    fn pull_app(&self) {
        self.w
            .pull_through(&self.proxy, "docker://ghcr.io/team/app:v1", None, &self.app);
    }

    fn pull_web(&self) {
        self.w
            .pull_through(&self.proxy, "docker://ghcr.io/team/web:v2", None, &self.web);
    }

    fn data_dir(&self) -> String {
        self.proxy.data_dir().display().to_string()
    }

    /// `regcache cache ARGS… --data-dir <the server's>`.
    fn cache(&self, args: &[&str]) -> Output {
        let mut all = vec!["cache"];
        all.extend_from_slice(args);
        let dir = self.data_dir();
        all.extend(["--data-dir", &dir]);
        run_cli(&all)
    }

    /// `cache ls --json [extra…]`, parsed.
    fn ls(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["ls", "--json"];
        args.extend_from_slice(extra);
        let out = self.cache(&args);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
    }

    fn stats(&self) -> Value {
        let out = self.cache(&["stats", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until `ls` shows exactly `references`, each with all its blobs committed (a
    /// download is committed just after its last byte reaches the client).
    fn wait_listed(&self, references: &[&str]) -> Vec<Value> {
        support::poll_until(Duration::from_secs(15), || {
            let images = self.ls(&[]);
            let refs: Vec<&str> = images.iter().map(|i| i["reference"].as_str().unwrap()).collect();
            (refs == references && images.iter().all(|i| i["missing_blobs"] == 0 && i["cached"] == true))
                .then_some(images)
        })
        .unwrap_or_else(|| panic!("ls never showed {references:?}: {:#?}", self.ls(&[])))
    }

    /// Upstream GETs whose path contains `part` (the registry logs a request once answered).
    fn upstream_gets(&self, part: &str) -> usize {
        self.registry.count_requests("GET", part)
    }

    fn wait_upstream_gets(&self, part: &str, n: usize) {
        let got = support::poll_until(Duration::from_secs(10), || {
            let c = self.upstream_gets(part);
            (c >= n).then_some(c)
        });
        assert_eq!(got, Some(n), "upstream GETs of {part}");
    }
}

/// A response body parsed as JSON.
async fn json_of(res: reqwest::Response) -> Value {
    let bytes = res.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit status `code` and one line on stderr; returns it.
fn fails_with(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    err
}

fn image_size(image: &TestImage) -> u64 {
    image.total_blob_size() + image.manifest.len() as u64
}

fn content_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir
        .join("cache/content-v2/sha256")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex[4..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_ls_rm_and_verify_work_while_the_server_runs() {
    let s = setup().await;
    s.pull_app();
    s.pull_web();
    let images = s.wait_listed(&["ghcr.io/team/app:v1", "ghcr.io/team/web:v2"]);

    // ls: one line per image with its digest and size.
    for (json, image, tag) in [(&images[0], &s.app, "v1"), (&images[1], &s.web, "v2")] {
        assert_eq!(json["registry"], "ghcr.io");
        assert_eq!(json["tag"], tag);
        assert_eq!(json["digest"], image.manifest_digest.as_str());
        assert_eq!(json["media_type"], image.media_type);
        assert_eq!(json["size"], image_size(image), "{json}");
        assert_eq!(json["blobs"], image.blob_digests().len());
        assert_eq!(json["manifests"], 1);
        assert!(json["last_used_ms"].as_u64().unwrap() > 0);
        assert!(json["last_used"].as_str().unwrap().ends_with('Z'));
    }
    let out = s.cache(&["ls"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(&format!("ghcr.io/team/app:v1 → {}", s.app.manifest_digest)),
        "{text}"
    );
    assert_eq!(s.ls(&["--registry", "ghcr.io"]).len(), 2);
    assert_eq!(
        s.ls(&["--registry", "ghcr.io:443"]).len(),
        2,
        "registry spellings are one"
    );
    assert!(s.ls(&["--registry", "quay.io"]).is_empty());
    let only = s.ls(&["--repo", "team/a*"]);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["reference"], "ghcr.io/team/app:v1");
    assert_eq!(s.ls(&["--repo", "ghcr.io/team/web"]).len(), 1);
    assert!(stdout(&s.cache(&["ls", "--registry", "quay.io"])).contains("no cached images"));
    fails_with(&s.cache(&["ls", "--repo", "["]), 2);

    // stats: what was pulled, exactly.
    let stats = s.stats();
    let blob_count = s.app.blob_digests().len() + s.web.blob_digests().len();
    let blob_bytes = s.app.total_blob_size() + s.web.total_blob_size();
    let manifest_bytes = (s.app.manifest.len() + s.web.manifest.len()) as u64;
    assert_eq!(stats["blobs"]["count"], blob_count, "{stats:#}");
    assert_eq!(stats["blobs"]["bytes"], blob_bytes, "{stats:#}");
    assert_eq!(stats["manifests"]["count"], 2);
    assert_eq!(stats["manifests"]["bytes"], manifest_bytes);
    assert_eq!(stats["content"]["bytes"], blob_bytes + manifest_bytes);
    assert_eq!(stats["content"]["count"], blob_count + 2);
    assert_eq!(stats["tags"], 2);
    assert_eq!(stats["repositories"], 2);
    assert_eq!(stats["unreferenced_blobs"]["count"], 0);
    let ghcr = &stats["registries"][0];
    assert_eq!(ghcr["registry"], "ghcr.io");
    assert_eq!(ghcr["blobs"], blob_count);
    assert_eq!(ghcr["bytes"], blob_bytes + manifest_bytes);
    assert!(stats["disk"]["available_bytes"].as_u64().unwrap() > 0);
    assert!(stats["hits"].is_null(), "hits are not invented: {stats:#}");
    let text = stdout(&s.cache(&["stats"]));
    assert!(
        text.contains(&format!("({} bytes)", blob_bytes + manifest_bytes)),
        "{text}"
    );
    assert!(text.contains("per registry:") && text.contains("ghcr.io"), "{text}");
    assert!(text.contains("not recorded"), "{text}");

    // rm of one tag while the server holds it in memory: gone from ls, the next pull is a miss.
    let manifest_path = "/v2/team/app/manifests/v1";
    let layer = s.app.layers[0].digest.clone();
    let gets_before = s.upstream_gets(manifest_path);
    s.wait_upstream_gets(&layer, 1);
    let out = s.cache(&["rm", "ghcr.io/team/app:v1"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("removed tag ghcr.io/team/app:v1 →"), "{text}");
    assert!(text.contains(&format!("({} bytes)", image_size(&s.app))), "{text}");
    let left = s.ls(&[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["reference"], "ghcr.io/team/web:v2");
    assert_eq!(s.stats()["blobs"]["count"], s.web.blob_digests().len());
    s.pull_app();
    s.wait_upstream_gets(manifest_path, gets_before + 1);
    s.wait_upstream_gets(&layer, 2);
    s.wait_listed(&["ghcr.io/team/app:v1", "ghcr.io/team/web:v2"]);

    // Bad references are usage errors; references that match nothing are failures.
    assert!(fails_with(&s.cache(&["rm", "ghcr.io/Team/App"]), 2).contains("ghcr.io/Team/App"));
    assert!(fails_with(&s.cache(&["rm", "ghcr.io/team/nothing:here"]), 1).contains("nothing cached matches"));
    let out = run_cli(&["cache", "stats", "--data-dir", "/nonexistent/regcache-data"]);
    assert!(fails_with(&out, 1).contains("/nonexistent/regcache-data"));

    // verify: clean, then a flipped byte in a layer is found, and --repair removes it.
    let out = s.cache(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        stdout(&out).contains(&format!("checked {} content files", blob_count + 2)),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).contains(": 0 corrupt"), "{}", show(&out));

    let victim = s.web.layers[0].digest.clone();
    let path = content_path(s.proxy.data_dir(), &victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let out = s.cache(&["verify"]);
    let err = fails_with(&out, 1);
    assert!(err.contains("1 corrupt content file"), "{err}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "corrupt blob {}: expected {victim}, got sha256:",
            path.display()
        )),
        "{text}"
    );
    let out = s.cache(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["corrupt"][0]["expected"], victim.as_str());
    assert_eq!(report["corrupt"][0]["kind"], "blob");
    assert_eq!(report["corrupt"][0]["removed"], false);

    let out = s.cache(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("removed 1"), "{}", show(&out));
    assert!(!path.exists(), "the corrupt blob is gone");
    let listed = s.ls(&["--repo", "team/web"]);
    assert_eq!(listed[0]["missing_blobs"], 1, "{listed:?}");

    // The next pull downloads it again (a miss) and gets the right bytes.
    s.wait_upstream_gets(&victim, 1);
    s.pull_web();
    s.wait_upstream_gets(&victim, 2);
    s.wait_listed(&["ghcr.io/team/app:v1", "ghcr.io/team/web:v2"]);
    let out = s.cache(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_like_ls_and_purges_from_loopback() {
    let s = setup().await;
    s.pull_app();
    s.pull_web();
    s.wait_listed(&["ghcr.io/team/app:v1", "ghcr.io/team/web:v2"]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let api = format!("{}/_regcache/cache", s.proxy.proxy_url());

    // GET: the same JSON as `cache ls --json`, filters alike.
    let res = http.get(&api).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let listed: Value = json_of(res).await;
    assert_eq!(listed, Value::Array(s.ls(&[])));
    let filtered: Value = json_of(
        http.get(format!("{api}?registry=ghcr.io&repo=team%2Fw*"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        filtered,
        Value::Array(s.ls(&["--registry", "ghcr.io", "--repo", "team/w*"]))
    );
    assert_eq!(filtered.as_array().unwrap().len(), 1);

    // DELETE of a tag (URL-encoded): JSON of what went, and the server forgets it at once.
    let manifest_path = "/v2/team/app/manifests/v1";
    let gets_before = s.upstream_gets(manifest_path);
    let res = http
        .delete(format!("{api}/ghcr.io%2Fteam%2Fapp%3Av1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let report: Value = json_of(res).await;
    assert_eq!(report["ref"], "ghcr.io/team/app:v1");
    assert_eq!(report["tags"][0]["tag"], "v1");
    assert_eq!(report["tags"][0]["digest"], s.app.manifest_digest.as_str());
    assert_eq!(report["manifests"][0]["repository"], "team/app");
    assert_eq!(report["bytes_freed"], image_size(&s.app), "{report:#}");
    assert_eq!(
        report["content"].as_array().unwrap().len(),
        s.app.blob_digests().len() + 1
    );
    assert_eq!(s.ls(&[]).len(), 1);
    s.pull_app();
    s.wait_upstream_gets(manifest_path, gets_before + 1);
    s.wait_listed(&["ghcr.io/team/app:v1", "ghcr.io/team/web:v2"]);

    // Errors: nothing matches, a bad reference, no reference, a method the API has not.
    let res = http.delete(format!("{api}/ghcr.io%2Fnope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(json_of(res).await["error"].as_str().unwrap().contains("nothing cached"));
    assert_eq!(
        http.delete(format!("{api}/ghcr.io%2FBad"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(http.delete(&api).send().await.unwrap().status(), 400);
    let res = http.post(&api).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD, DELETE");

    // A glob, unencoded in the path: both images go.
    let res = http.delete(format!("{api}/ghcr.io/team/*")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let report: Value = json_of(res).await;
    assert_eq!(report["tags"].as_array().unwrap().len(), 2);
    let listed: Value = json_of(http.get(&api).send().await.unwrap()).await;
    assert_eq!(listed, Value::Array(vec![]));
    assert_eq!(s.stats()["content"]["count"], 0);
    assert!(s.proxy.logs().contains("cache purged"));
}
