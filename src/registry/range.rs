//! `Range: bytes=…` on blobs (RFC 9110 §14). containerd resumes with `bytes=N-`; a single range
//! is honoured, anything else (several ranges, other units, bad syntax) is ignored and the
//! whole blob is sent, which §14.2 allows.

use http::HeaderMap;

/// What to send for a blob of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole blob (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the range exists (416).
    Unsatisfiable,
}

/// Interprets the request's `Range` header against a blob of `total` bytes.
pub fn parse(headers: &HeaderMap, total: u64) -> ByteRange {
    let Some(value) = headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()) else {
        return ByteRange::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if total == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Partial {
                start: total.saturating_sub(n),
                end: total - 1,
            },
            None => ByteRange::Full,
        },
        (false, _) => {
            let Some(start) = num(first) else {
                return ByteRange::Full;
            };
            let end = if last.is_empty() {
                total.saturating_sub(1)
            } else {
                match num(last) {
                    Some(e) if e >= start => e.min(total.saturating_sub(1)),
                    _ => return ByteRange::Full,
                }
            };
            if start >= total {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial { start, end }
            }
        }
        (true, true) => ByteRange::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, total: u64) -> ByteRange {
        let mut h = HeaderMap::new();
        h.insert(http::header::RANGE, v.parse().unwrap());
        parse(&h, total)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse(&HeaderMap::new(), 10), ByteRange::Full);
        assert_eq!(r("bytes=4-", 10), ByteRange::Partial { start: 4, end: 9 });
        assert_eq!(r("bytes=2-5", 10), ByteRange::Partial { start: 2, end: 5 });
        assert_eq!(r("bytes=2-500", 10), ByteRange::Partial { start: 2, end: 9 });
        assert_eq!(r("bytes=-3", 10), ByteRange::Partial { start: 7, end: 9 });
        assert_eq!(r("bytes=-30", 10), ByteRange::Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=10-", 10), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), ByteRange::Full);
        assert_eq!(r("bytes=0-1,4-5", 10), ByteRange::Full);
        assert_eq!(r("items=0-1", 10), ByteRange::Full);
        assert_eq!(r("bytes=x-", 10), ByteRange::Full);
    }
}
