//! The common start of an end-to-end pull test: a test CA for upstreams, a temp dir, and a
//! skopeo pull through regcache that checks every digest.

use std::path::PathBuf;

use super::image::TestImage;
use super::skopeo::{assert_success, verify_dir_blobs};
use super::{Regcache, TestCa, cert_dir_with, manifest_digest_of_dir, skopeo_copy};

/// A test CA for upstream servers, its certificate on disk, and a scratch directory.
pub struct PullWorld {
    /// Signs the upstream servers' certificates.
    pub ca: TestCa,
    /// Scratch space (pull destinations, cert dirs).
    pub tmp: tempfile::TempDir,
    /// `ca` as a PEM file, for `--upstream-ca`.
    pub upstream_ca_file: PathBuf,
}

impl PullWorld {
    /// A fresh world (installs the crypto provider).
    pub fn new() -> Self {
        super::install_crypto_provider();
        let ca = TestCa::new();
        let tmp = tempfile::tempdir().expect("temp dir");
        let upstream_ca_file = ca.write_cert(tmp.path());
        Self {
            ca,
            tmp,
            upstream_ca_file,
        }
    }

    /// Pulls `src` through `proxy` with skopeo into a fresh directory, trusting regcache's CA
    /// only, checks the manifest digest and re-hashes every blob; returns the directory.
    pub fn pull_through(&self, proxy: &Regcache, src: &str, creds: Option<(&str, &str)>, image: &TestImage) -> PathBuf {
        self.pull_via(&proxy.proxy_url(), proxy, src, creds, image)
    }

    /// As [`PullWorld::pull_through`] with `HTTPS_PROXY=proxy_url`, e.g. one carrying proxy
    /// credentials (`http://user:pass@127.0.0.1:PORT`).
    pub fn pull_via(
        &self,
        proxy_url: &str,
        proxy: &Regcache,
        src: &str,
        creds: Option<(&str, &str)>,
        image: &TestImage,
    ) -> PathBuf {
        // The registry's own (test) CA is not in this dir: a successful pull proves the
        // connection was intercepted and re-signed.
        let cert_dir = cert_dir_with(self.tmp.path(), &[&proxy.ca_cert_pem()]);
        let dest = self.tmp.path().join(format!("pull-{}", super::random_hex(4)));
        let out = skopeo_copy(proxy_url, &cert_dir, src, &dest, creds);
        if !out.status.success() {
            eprintln!("----- regcache -----\n{}", proxy.logs());
        }
        assert_success(&out, &format!("skopeo copy {src} through regcache"));
        assert_eq!(
            manifest_digest_of_dir(&dest),
            image.manifest_digest,
            "{src}: manifest digest"
        );
        let mut expected = image.blob_digests();
        expected.sort();
        assert_eq!(
            verify_dir_blobs(&dest),
            expected,
            "{src}: blob digests (re-hashed from disk)"
        );
        dest
    }
}
