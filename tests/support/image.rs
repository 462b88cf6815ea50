//! Test images (random incompressible uncompressed-tar layers, config,
//! manifest, optional multi-platform index) and a small registry client
//! that pushes them straight to a registry (no proxy), handling Basic and
//! Bearer-token auth.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Result;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// `Accept` value listing every manifest type these fixtures produce.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifest flavour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// OCI image manifest / OCI index (default).
    #[default]
    Oci,
    /// Docker schema 2 manifest / manifest list.
    Docker,
}

impl ImageFormat {
    fn manifest_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_MANIFEST,
            ImageFormat::Docker => DOCKER_MANIFEST,
        }
    }
    fn index_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_INDEX,
            ImageFormat::Docker => DOCKER_MANIFEST_LIST,
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_CONFIG,
            ImageFormat::Docker => DOCKER_CONFIG,
        }
    }
    fn layer_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_LAYER_TAR,
            ImageFormat::Docker => DOCKER_LAYER_TAR,
        }
    }
}

/// Go/OCI architecture name of the machine running the tests (what skopeo
/// picks from an index by default).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What image to generate.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    layer_sizes: Vec<u64>,
    os: String,
    arch: String,
    format: ImageFormat,
}

impl ImageSpec {
    /// Layers whose random payload has these sizes in bytes; linux/host arch;
    /// OCI.
    pub fn new(layer_sizes: &[u64]) -> Self {
        ImageSpec {
            layer_sizes: layer_sizes.to_vec(),
            os: "linux".into(),
            arch: host_arch().into(),
            format: ImageFormat::Oci,
        }
    }

    /// Platform written to the config (and to the index entry).
    pub fn platform(mut self, os: &str, arch: &str) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self
    }

    /// OCI or Docker schema 2 media types.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }

    /// Generates the layers into a temp dir plus config and manifest.
    pub fn build(&self) -> TestImage {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("regcache-image-")
                .tempdir()
                .expect("create image temp dir"),
        );
        let layers: Vec<Layer> = self
            .layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let path = dir.path().join(format!("layer-{i}.tar"));
                let (digest, blob_size) = write_random_tar_layer(&path, i, size)
                    .unwrap_or_else(|e| panic!("write layer {i} to {}: {e}", path.display()));
                Layer {
                    digest,
                    size: blob_size,
                    media_type: self.format.layer_type(),
                    path,
                }
            })
            .collect();

        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let history: Vec<serde_json::Value> = layers
            .iter()
            .enumerate()
            .map(|(i, _)| serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("regcache test layer {i}")}))
            .collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.arch,
            "os": self.os,
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Labels": { "regcache.test.nonce": super::random_hex(8) } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        }))
        .expect("serialize image config");
        let config_digest = super::sha256_digest(&config);

        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
            .collect();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_type(),
            "config": { "mediaType": self.format.config_type(), "digest": config_digest, "size": config.len() },
            "layers": layer_descs,
        }))
        .expect("serialize image manifest");
        let manifest_digest = super::sha256_digest(&manifest);

        TestImage {
            format: self.format,
            os: self.os.clone(),
            arch: self.arch.clone(),
            layers,
            config,
            config_digest,
            media_type: self.format.manifest_type(),
            manifest,
            manifest_digest,
            dir,
        }
    }
}

/// One layer blob, stored in a temp file.
#[derive(Clone, Debug)]
pub struct Layer {
    /// `sha256:…` of the tar (also its diff_id: layers are uncompressed).
    pub digest: String,
    /// Blob size in bytes (payload + tar headers and padding).
    pub size: u64,
    /// Layer media type.
    pub media_type: &'static str,
    /// Where the blob lives (inside the image's temp dir).
    pub path: PathBuf,
}

/// A generated single-platform image. Its temp dir (the layer files) lives as
/// long as any clone of it.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub format: ImageFormat,
    pub os: String,
    pub arch: String,
    pub layers: Vec<Layer>,
    /// Config JSON bytes.
    pub config: Vec<u8>,
    pub config_digest: String,
    /// Manifest media type.
    pub media_type: &'static str,
    /// Manifest bytes exactly as pushed.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    dir: Arc<tempfile::TempDir>,
}

impl TestImage {
    /// An OCI linux/host-arch image whose layers carry `layer_sizes` random
    /// bytes each.
    pub fn generate(layer_sizes: &[u64]) -> TestImage {
        ImageSpec::new(layer_sizes).build()
    }

    /// Reads layer `i` fully into memory (for small layers).
    pub fn layer_bytes(&self, i: usize) -> Vec<u8> {
        std::fs::read(&self.layers[i].path)
            .unwrap_or_else(|e| panic!("read layer {i} ({}): {e}", self.layers[i].path.display()))
    }

    /// Layer digests in manifest order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// Config digest followed by the layer digests.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config_digest.clone())
            .chain(self.layer_digests())
            .collect()
    }

    /// Sum of layer sizes plus config size.
    pub fn total_blob_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum::<u64>() + self.config.len() as u64
    }

    /// The temp dir holding the layer files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A multi-platform image: an index (OCI or Docker list) over several images.
#[derive(Clone, Debug)]
pub struct TestIndex {
    pub images: Vec<TestImage>,
    /// Index media type.
    pub media_type: &'static str,
    /// Index bytes exactly as pushed.
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl TestIndex {
    /// One image per `(os, arch)` in `platforms`, each with its own random
    /// layers of `layer_sizes`, wrapped in an OCI index.
    pub fn generate(platforms: &[(&str, &str)], layer_sizes: &[u64]) -> TestIndex {
        TestIndex::generate_with(ImageFormat::Oci, platforms, layer_sizes)
    }

    /// Two platforms, `linux/amd64` and `linux/arm64`.
    pub fn generate_two_platform(layer_sizes: &[u64]) -> TestIndex {
        TestIndex::generate(&[("linux", "amd64"), ("linux", "arm64")], layer_sizes)
    }

    /// As [`TestIndex::generate`] with a chosen format.
    pub fn generate_with(format: ImageFormat, platforms: &[(&str, &str)], layer_sizes: &[u64]) -> TestIndex {
        let images: Vec<TestImage> = platforms
            .iter()
            .map(|(os, arch)| ImageSpec::new(layer_sizes).platform(os, arch).format(format).build())
            .collect();
        TestIndex::from_images(format, images)
    }

    /// Wraps existing images (their os/arch become the index platforms).
    pub fn from_images(format: ImageFormat, images: Vec<TestImage>) -> TestIndex {
        let entries: Vec<serde_json::Value> = images
            .iter()
            .map(|img| {
                serde_json::json!({
                    "mediaType": img.media_type,
                    "digest": img.manifest_digest,
                    "size": img.manifest.len(),
                    "platform": { "architecture": img.arch, "os": img.os },
                })
            })
            .collect();
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": format.index_type(),
            "manifests": entries,
        }))
        .expect("serialize index");
        let digest = super::sha256_digest(&manifest);
        TestIndex {
            images,
            media_type: format.index_type(),
            manifest,
            digest,
        }
    }

    /// The image for `arch` (linux), if present.
    pub fn image_for_arch(&self, arch: &str) -> Option<&TestImage> {
        self.images.iter().find(|i| i.arch == arch)
    }
}

/// Writer that hashes and counts what passes through.
/// Uses aws-lc-rs (optimised C even in debug builds): hashing a 200 MB image
/// with the pure-Rust sha2 crate at opt-level 0 takes seconds.
struct HashingWriter<W> {
    inner: W,
    hasher: aws_lc_rs::digest::Context,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reader yielding `remaining` random bytes (aws-lc-rs DRBG: fast in debug
/// builds too).
struct RandomReader {
    remaining: u64,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(1 << 20)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        aws_lc_rs::rand::fill(&mut buf[..n]).map_err(|_| std::io::Error::other("aws-lc-rs rand"))?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes an uncompressed tar holding one file of `payload` random bytes.
/// Returns the blob's digest and size. Streams: memory use is constant.
fn write_random_tar_layer(path: &Path, index: usize, payload: u64) -> Result<(String, u64)> {
    let file = std::fs::File::create(path)?;
    let writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        written: 0,
    };
    let mut builder = tar::Builder::new(writer);
    let mut header = tar::Header::new_ustar();
    header.set_size(payload);
    header.set_mode(0o644);
    header.set_mtime(1_704_067_200);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let reader = RandomReader { remaining: payload };
    builder.append_data(
        &mut header,
        format!("regcache-test/layer-{index}-{}.bin", super::random_hex(4)),
        reader,
    )?;
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    let digest = format!("sha256:{}", super::hex(writer.hasher.finish().as_ref()));
    Ok((digest, writer.written))
}

/// What was pushed for one image.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub config_digest: String,
    /// `(digest, size)` per layer, in manifest order.
    pub layers: Vec<(String, u64)>,
}

/// What was pushed for an index.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub images: Vec<PushedImage>,
}

/// Pushes `image` to `registry_url` (e.g. `https://127.0.0.1:PORT`) as
/// `repo:tag`, trusting only `ca_pem`, no proxy. `creds` are used for Basic
/// auth or sent to the token realm, whichever the registry asks for.
pub async fn push(
    registry_url: &str,
    repo: &str,
    tag: &str,
    image: &TestImage,
    creds: Option<(&str, &str)>,
    ca_pem: &str,
) -> Result<PushedImage> {
    RegistryClient::new(registry_url, ca_pem, creds, &[])?
        .push_image(repo, tag, image)
        .await
}

/// As [`push`] for an index (children pushed by digest, then the index as
/// `tag`).
pub async fn push_index(
    registry_url: &str,
    repo: &str,
    tag: &str,
    index: &TestIndex,
    creds: Option<(&str, &str)>,
    ca_pem: &str,
) -> Result<PushedIndex> {
    RegistryClient::new(registry_url, ca_pem, creds, &[])?
        .push_index(repo, tag, index)
        .await
}

/// Parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug)]
pub struct Challenge {
    /// Lower-cased scheme (`basic`, `bearer`).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, …).
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (quoted or bare values).
pub fn parse_www_authenticate(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Clone, Debug)]
enum AuthState {
    Basic,
    Bearer(String),
}

/// Minimal registry API client for seeding registries directly (never
/// through a proxy).
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    creds: Option<(String, String)>,
    /// Auth learned per repository (token scopes are per repository).
    auth: Mutex<HashMap<String, AuthState>>,
}

/// A fetched manifest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub status: u16,
    pub content_type: Option<String>,
    pub docker_content_digest: Option<String>,
    pub body: Vec<u8>,
}

impl RegistryClient {
    /// `base_url` like `https://127.0.0.1:PORT` or `https://ghcr.io:PORT`;
    /// trusts only `ca_pem`; never uses a proxy. `resolve` maps host names to
    /// addresses; the address's port is used when the URL has none (so
    /// `("auth.docker.io", 127.0.0.1:TOKENPORT)` makes a realm
    /// `https://auth.docker.io/token` reachable).
    pub fn new(
        base_url: &str,
        ca_pem: &str,
        creds: Option<(&str, &str)>,
        resolve: &[(&str, SocketAddr)],
    ) -> Result<Self> {
        let mut builder = super::reqwest_builder(&[ca_pem])
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .redirect(reqwest::redirect::Policy::none());
        for (host, addr) in resolve {
            builder = builder.resolve(host, *addr);
        }
        Ok(RegistryClient {
            http: builder.build()?,
            base: base_url.trim_end_matches('/').to_owned(),
            creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The underlying reqwest client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn authorize(&self, repo: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let state = self.auth.lock().expect("auth state lock poisoned").get(repo).cloned();
        match (state, &self.creds) {
            (Some(AuthState::Bearer(token)), _) => req.bearer_auth(token),
            (Some(AuthState::Basic), Some((u, p))) => req.basic_auth(u, Some(p)),
            _ => req,
        }
    }

    /// Sends the request built by `make`, answering one 401 challenge
    /// (Basic or Bearer for `repository:<repo>:pull,push`) and retrying.
    pub async fn send(
        &self,
        repo: &str,
        make: impl Fn() -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        let resp = self.authorize(repo, make()?).send().await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_www_authenticate)
            .ok_or("401 without a usable WWW-Authenticate header")?;
        let state = match challenge.scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err("registry wants Basic auth but no credentials were given".into());
                }
                AuthState::Basic
            }
            "bearer" => AuthState::Bearer(self.fetch_token(repo, &challenge).await?),
            other => return Err(format!("unsupported auth scheme {other:?}").into()),
        };
        self.auth
            .lock()
            .expect("auth state lock poisoned")
            .insert(repo.to_owned(), state);
        Ok(self.authorize(repo, make()?).send().await?)
    }

    async fn fetch_token(&self, repo: &str, challenge: &Challenge) -> Result<String> {
        let realm = challenge.params.get("realm").ok_or("Bearer challenge without realm")?;
        let mut url = reqwest::Url::parse(realm)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &format!("repository:{repo}:pull,push"));
        }
        let mut req = self.http.get(url);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            return Err(format!(
                "token endpoint {realm} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| "token response without token".into())
    }

    /// Whether the registry has blob `digest` in `repo` (HEAD → 200).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self.send(repo, || Ok(self.http.head(&url))).await?;
        Ok(resp.status() == reqwest::StatusCode::OK)
    }

    /// Monolithic upload (POST, then PUT `?digest=`) of a blob from a file,
    /// streamed; skipped if the blob already exists.
    pub async fn push_blob_file(&self, repo: &str, digest: &str, path: &Path) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let size = std::fs::metadata(path)?.len();
        let location = self.start_upload(repo, digest).await?;
        let resp = self
            .send(repo, || {
                let file = std::fs::File::open(path)?;
                let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
                Ok(self
                    .http
                    .put(location.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream)))
            })
            .await?;
        check_status(resp, reqwest::StatusCode::CREATED, &format!("PUT blob {digest}")).await?;
        Ok(())
    }

    /// Monolithic upload of an in-memory blob; skipped if it exists.
    pub async fn push_blob_bytes(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let location = self.start_upload(repo, digest).await?;
        let resp = self
            .send(repo, || {
                Ok(self
                    .http
                    .put(location.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(data.to_vec()))
            })
            .await?;
        check_status(resp, reqwest::StatusCode::CREATED, &format!("PUT blob {digest}")).await?;
        Ok(())
    }

    /// POSTs an upload session; returns the absolute URL to PUT the whole
    /// blob to (the `Location` plus `digest=`).
    async fn start_upload(&self, repo: &str, digest: &str) -> Result<reqwest::Url> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .send(repo, || {
                Ok(self.http.post(&url).header(reqwest::header::CONTENT_LENGTH, 0))
            })
            .await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        check_status(resp, reqwest::StatusCode::ACCEPTED, "POST blob upload").await?;
        let location = location.ok_or("upload POST without Location")?;
        let mut put_url = reqwest::Url::parse(&url)?.join(&location)?;
        put_url.query_pairs_mut().append_pair("digest", digest);
        Ok(put_url)
    }

    /// PUT a manifest under `reference` (tag or digest); returns the
    /// registry's `Docker-Content-Digest`.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .send(repo, || {
                Ok(self
                    .http
                    .put(&url)
                    .header(reqwest::header::CONTENT_TYPE, media_type)
                    .body(body.to_vec()))
            })
            .await?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        check_status(
            resp,
            reqwest::StatusCode::CREATED,
            &format!("PUT manifest {repo}:{reference}"),
        )
        .await?;
        digest.ok_or_else(|| "manifest PUT without Docker-Content-Digest".into())
    }

    /// GET a manifest with an `Accept` of all the types used here.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .send(repo, || {
                Ok(self.http.get(&url).header(reqwest::header::ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let content_type = header("content-type");
        let docker_content_digest = header("docker-content-digest");
        let status = resp.status().as_u16();
        let body = resp.bytes().await?.to_vec();
        Ok(FetchedManifest {
            status,
            content_type,
            docker_content_digest,
            body,
        })
    }

    /// DELETE a manifest by digest (the registry has delete enabled).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{digest}", self.base);
        let resp = self.send(repo, || Ok(self.http.delete(&url))).await?;
        check_status(resp, reqwest::StatusCode::ACCEPTED, "DELETE manifest").await?;
        Ok(())
    }

    /// Pushes config, layers (streamed from their files) and the manifest as
    /// `tag` (or only by digest when `tag` is empty).
    pub async fn push_image(&self, repo: &str, tag: &str, image: &TestImage) -> Result<PushedImage> {
        self.push_blob_bytes(repo, &image.config_digest, &image.config).await?;
        for layer in &image.layers {
            self.push_blob_file(repo, &layer.digest, &layer.path).await?;
        }
        let reference = if tag.is_empty() {
            image.manifest_digest.as_str()
        } else {
            tag
        };
        let digest = self
            .put_manifest(repo, reference, image.media_type, &image.manifest)
            .await?;
        if digest != image.manifest_digest {
            return Err(format!(
                "registry computed manifest digest {digest}, expected {}",
                image.manifest_digest
            )
            .into());
        }
        Ok(PushedImage {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            manifest_digest: digest,
            manifest: image.manifest.clone(),
            media_type: image.media_type,
            config_digest: image.config_digest.clone(),
            layers: image.layers.iter().map(|l| (l.digest.clone(), l.size)).collect(),
        })
    }

    /// Pushes every child image by digest, then the index as `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, index: &TestIndex) -> Result<PushedIndex> {
        let mut images = Vec::new();
        for image in &index.images {
            images.push(self.push_image(repo, "", image).await?);
        }
        let digest = self.put_manifest(repo, tag, index.media_type, &index.manifest).await?;
        if digest != index.digest {
            return Err(format!("registry computed index digest {digest}, expected {}", index.digest).into());
        }
        Ok(PushedIndex {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest,
            manifest: index.manifest.clone(),
            media_type: index.media_type,
            images,
        })
    }
}

/// Turns an unexpected status into an error carrying the body.
async fn check_status(resp: reqwest::Response, expected: reqwest::StatusCode, what: &str) -> Result<reqwest::Response> {
    if resp.status() == expected {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{what}: expected {expected}, got {status}: {body}").into())
}
