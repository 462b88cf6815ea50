//! Requests addressed to regcache itself: banner (or the status page for browsers), health,
//! metrics, the CA certificate and the client setup script.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::admin::{setup_script, status_page};
use crate::body::{self, Body};
use crate::telemetry::{self, Metrics};

/// The answers regcache gives about itself.
pub struct LocalEndpoints {
    ca_pem: String,
    banner: String,
}

impl LocalEndpoints {
    /// Endpoints serving `ca_pem` at `/ca.crt`.
    pub fn new(ca_pem: String) -> Self {
        let banner = format!(
            "regcache {}: caching proxy for container registries; CA certificate at /ca.crt",
            env!("CARGO_PKG_VERSION")
        );
        Self { ca_pem, banner }
    }

    /// Answers `GET`/`HEAD` for `/`, `/healthz`, `/metrics`, `/setup/systemd` and `/ca.crt`;
    /// anything else is 404 or 405. `/` is the one-line banner, or the HTML status page (of
    /// `metrics`) when the client accepts HTML.
    pub fn respond<B>(&self, req: &Request<B>, metrics: &Metrics) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = body::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "regcache: only GET and HEAD are served here",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match req.uri().path() {
            "/" if accepts_html(req) => vary_accept(html(status_page::render(&metrics.snapshot()))),
            "/" => vary_accept(body::text(StatusCode::OK, self.banner.clone())),
            "/metrics" => metrics_text(metrics.encode()),
            "/healthz" => body::text(StatusCode::OK, "ok"),
            "/setup/systemd" => setup_script::respond(req, &self.ca_pem),
            "/ca.crt" => {
                let mut res = Response::new(body::full(self.ca_pem.clone()));
                let h = res.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-x509-ca-cert"),
                );
                h.insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"regcache-ca.crt\""),
                );
                res
            }
            other => body::text(StatusCode::NOT_FOUND, format!("regcache: no such endpoint {other:?}")),
        }
    }
}

/// Whether the client lists HTML in `Accept` (browsers do; curl and scripts do not).
fn accepts_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// `/` answers by `Accept`: say so to any cache in between.
fn vary_accept(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    res
}

fn html(page: String) -> Response<Body> {
    let mut res = Response::new(body::full(page));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn metrics_text(text: String) -> Response<Body> {
    let mut res = Response::new(body::full(text));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(telemetry::CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
