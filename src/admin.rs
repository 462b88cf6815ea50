//! Requests addressed to regcache itself: banner, health and the CA certificate.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::{self, Body};

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

    /// Answers `GET`/`HEAD` for `/`, `/healthz` and `/ca.crt`; anything else is 404 or 405.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
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
            "/" => body::text(StatusCode::OK, self.banner.clone()),
            "/healthz" => body::text(StatusCode::OK, "ok"),
            "/setup/systemd" => crate::setup_script::respond(req, &self.ca_pem),
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
