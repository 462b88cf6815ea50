//! The one body type used on every hop, and small constructors for local answers.
//!
//! May import: nothing else of the crate.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error type carried by bodies (hyper's and our own stream errors alike).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body: chunks of `Bytes`, never collected for blobs.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body from bytes already in memory (banners, error messages, small documents).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Any body whose error converts into [`BoxError`], boxed.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A `text/plain` response holding one line.
pub fn text(status: StatusCode, line: impl Into<String>) -> Response<Body> {
    let mut line = line.into();
    line.push('\n');
    let mut res = Response::new(full(line));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
