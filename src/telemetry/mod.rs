//! What regcache tells its operator about the traffic: one access-log line per request and the
//! Prometheus counters, with the most requested repositories for the status page.
//!
//! Owns: [`Metrics`] (made once by `app` and handed in, never a global), [`AccessRecord`] and
//! [`LoggedBody`] (the line is written when a response body ends), [`Outcome`] (the cache
//! outcome every layer reports in), the access line's format ([`LogLine`]) and the buffer
//! lines wait in before stderr ([`LogBuffer`]).
//!
//! Must not: decide anything about a request, or do I/O beyond writing log lines.
//!
//! May import: `registry` (to classify paths for labels), `config`, `body`.

mod access_log;
mod log_buffer;
mod log_line;
mod metrics;
mod store_metrics;
mod top_images;
mod upstream_metrics;

pub use access_log::{AccessRecord, Listener, LoggedBody, Outcome};
pub use log_buffer::{LogBuffer, LogBufferGuard};
pub use log_line::LogLine;
#[cfg(test)]
pub use metrics::OUTCOMES;
pub use metrics::{BodyKind, CONTENT_TYPE, Metrics, Snapshot, TlsFailure};
pub use store_metrics::{LeaseOutcome, StoreMetrics};
#[cfg(test)]
pub use top_images::ImageCount;
pub use upstream_metrics::{Route, UpstreamMetrics};
