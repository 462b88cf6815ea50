//! Limits on client input (`[limits]` in the file, `--max-connections`), as plain data; the
//! proxy enforces them.

/// hyper's own default for the number of header fields; setting it explicitly makes hyper
/// allocate the header array on the heap for every request, so it is only set when it differs.
pub const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Limits on client input (`[limits]` in the file, `--max-connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once, tunnels included; more are answered 503.
    pub max_connections: usize,
    /// Bytes of a request head (request line and header fields); more is 431.
    pub max_header_bytes: usize,
    /// Header fields in a request; more is 431.
    pub max_headers: usize,
    /// Bytes of the request target (path and query, or the absolute URI); more is 414.
    pub max_request_line: usize,
}

impl Default for Limits {
    /// 4096 connections fit the `LimitNOFILE=65536` of the shipped unit with room for upstream
    /// sockets and the store. 64 KiB of head is far above any registry client's (the largest
    /// are cloud tokens in `Authorization`, a few KiB), 100 fields is hyper's and nginx's
    /// order of magnitude, and 8 KiB of request target is nginx's default buffer: registry
    /// paths are names and digests, token queries a few scopes.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_request_line: 8 * 1024,
        }
    }
}
