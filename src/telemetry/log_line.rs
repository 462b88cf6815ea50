//! The text format of a log line, with a cheap path for the access log.
//!
//! tracing-subscriber's default `Full` format costs a cached HEAD more CPU than answering it
//! (styling hooks, a calendar computation per line, a field visitor with escape guards). The
//! access line (`regcache::access`, one per request) is written here with the same bytes:
//! `2026-12-07T15:30:49.123456Z  INFO regcache::access: request client=… listener="proxy" …`.
//! Every other event, and any line with ANSI colours or inside a span, goes through the default
//! format unchanged, so the two can never drift apart for them.

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime as DefaultTimer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of the per-request line (see `AccessRecord::emit`).
pub const ACCESS_TARGET: &str = "regcache::access";

/// Event formatter: the access line by hand, the rest by tracing-subscriber's default.
#[derive(Debug, Default)]
pub struct LogLine {
    default: Format<Full, DefaultTimer>,
}

impl<S, N> FormatEvent<S, N> for LogLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET || writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.default.format_event(ctx, writer, event);
        }
        write_access_line(&mut writer, meta.level(), meta.target(), event)
    }
}

fn write_access_line(writer: &mut Writer<'_>, level: &Level, target: &str, event: &Event<'_>) -> fmt::Result {
    write_timestamp(writer)?;
    writer.write_char(' ')?;
    writer.write_str(level_word(level))?;
    writer.write_char(' ')?;
    writer.write_str(target)?;
    writer.write_str(": ")?;
    let mut fields = FieldWriter {
        writer,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    writer.write_char('\n')
}

/// The default format's level words, padded to five characters.
fn level_word(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS`: lines come
    /// thousands per second, the date changes once.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 UTC with microseconds, as the default `SystemTime` timer writes it.
fn write_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string();
            // "YYYY-MM-DDTHH:MM:SSZ": keep all but the zone letter.
            cached.1 = full.trim_end_matches('Z').to_string();
            cached.0 = secs;
        }
        write!(writer, "{}.{:06}Z", cached.1, now.subsec_micros())
    })
}

/// Writes fields as tracing-subscriber's `DefaultFields` does: `name=value` separated by
/// spaces, values by `Debug` (so strings are quoted), the message first and bare.
struct FieldWriter<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        let name = field.name();
        self.result = self.result.and_then(|()| match name {
            "message" => write!(self.writer, "{value:?}"),
            name => write!(self.writer, "{}={value:?}", name.strip_prefix("r#").unwrap_or(name)),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn access_event() {
        let client: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        tracing::info!(
            target: "regcache::access",
            client = %client,
            listener = "proxy",
            host = %"ghcr.io:443",
            method = %http::Method::HEAD,
            path = %"/v2/library/alpine/manifests/3.20",
            cache = "hit",
            status = 200u16,
            bytes = 1234u64,
            ms = 0u64,
            complete = true,
            "request"
        );
    }

    fn render(with_log_line: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(out.clone());
        if with_log_line {
            tracing::subscriber::with_default(builder.event_format(LogLine::default()).finish(), access_event);
        } else {
            tracing::subscriber::with_default(builder.finish(), access_event);
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// Everything after the timestamp, and the timestamp's shape.
    fn split_time(line: &str) -> (&str, &str) {
        line.split_at(line.find(' ').unwrap())
    }

    #[test]
    fn the_access_line_is_the_default_formats_line() {
        let ours = render(true);
        let default = render(false);
        let (our_time, our_rest) = split_time(&ours);
        let (default_time, default_rest) = split_time(&default);
        assert_eq!(our_rest, default_rest);
        assert_eq!(our_time.len(), default_time.len(), "{our_time} vs {default_time}");
        assert!(our_time.ends_with('Z') && our_time.as_bytes()[19] == b'.', "{our_time}");
        // Same second (or the next one, had the clock ticked between the two renders).
        let (ours_s, default_s) = (&our_time[..19], &default_time[..19]);
        assert!(ours_s >= default_s, "{ours_s} vs {default_s}");
        assert!(our_rest.starts_with("  INFO regcache::access: request client=127.0.0.1:40000 listener=\"proxy\""));
        assert!(our_rest.ends_with("complete=true\n"), "{our_rest}");
    }

    #[test]
    fn the_timestamp_is_utc_with_microseconds() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(out.clone())
            .event_format(LogLine::default())
            .finish();
        let before = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        tracing::subscriber::with_default(subscriber, access_event);
        let line = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(line[..19] >= before[..19], "{line} vs {before}");
        assert!(line[20..26].bytes().all(|b| b.is_ascii_digit()), "{line}");
    }
}
