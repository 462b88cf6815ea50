//! The status page at `GET /` for browsers: what the cache saves, at a glance.
//!
//! One self-contained HTML document (inline CSS, no scripts, no external assets: it must work
//! on an air-gapped host and under a strict CSP). Every value that can come from a request
//! (repository and registry names) is escaped. Numbers shown rounded carry their exact value
//! in a `title` attribute.

use std::fmt::Write as _;
use std::time::Duration;

use crate::telemetry::Outcome;
use crate::telemetry::Snapshot;

/// How the page describes a cache without a size budget (there is none yet).
const NO_BUDGET: &str = "no limit";

/// Renders the page for `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let (answered, cacheable) = s.cache_answers();
    let hit_ratio = if cacheable == 0 {
        "–".to_string()
    } else {
        format!("{:.1}%", answered as f64 * 100.0 / cacheable as f64)
    };
    let quota = match s.docker_hub_remaining {
        Some(n) => group(n.max(0) as u64),
        None => "unknown".to_string(),
    };

    out.push_str(HEAD);
    let _ = write!(
        out,
        "<header><h1>regcache</h1><p>version {} · up {}</p></header>\n<main>\n<section class=\"cards\">\n",
        escape(s.version),
        uptime(s.uptime)
    );
    card(
        &mut out,
        "hit-ratio",
        "Hit ratio",
        &hit_ratio,
        &format!("{answered} of {cacheable}"),
        &format!(
            "{} of {} cacheable requests answered from the cache",
            group(answered),
            group(cacheable)
        ),
    );
    card(
        &mut out,
        "bytes-saved",
        "Bytes saved",
        &bytes(s.cache_served_bytes),
        &format!("{} bytes", s.cache_served_bytes),
        &format!(
            "served from the cache; {} fetched upstream",
            bytes(s.upstream_fetched_bytes)
        ),
    );
    card(
        &mut out,
        "pulls-avoided",
        "Upstream pulls avoided",
        &group(s.manifest_gets_avoided),
        &s.manifest_gets_avoided.to_string(),
        "manifest GETs answered without asking the registry",
    );
    card(
        &mut out,
        "docker-hub-quota",
        "Docker Hub quota left",
        &quota,
        &s.docker_hub_remaining
            .map_or_else(|| "unknown".into(), |n| n.to_string()),
        "pulls left in Docker Hub's window (ratelimit-remaining)",
    );
    let size = u64::try_from(s.cache_size_bytes).unwrap_or(0);
    let entries = u64::try_from(s.cache_entries).unwrap_or(0);
    card(
        &mut out,
        "cache-size",
        "Cache use",
        &bytes(size),
        &format!("{size} bytes"),
        &format!(
            "<span id=\"cache-entries\">{}</span> entries · budget: {NO_BUDGET} · {} evictions",
            group(entries),
            group(s.evictions)
        ),
    );
    card(
        &mut out,
        "downloads",
        "Downloads in progress",
        &group(u64::try_from(s.downloads_in_flight).unwrap_or(0)),
        &s.downloads_in_flight.to_string(),
        &format!(
            "TLS handshakes: {} ok, {} failed",
            group(s.tls_handshakes),
            group(s.tls_errors)
        ),
    );
    out.push_str("</section>\n<section class=\"tables\">\n");
    top_images(&mut out, s);
    outcomes(&mut out, s);
    out.push_str(
        "</section>\n</main>\n<footer><a href=\"/metrics\">/metrics</a> · <a href=\"/ca.crt\">/ca.crt</a> · \
         <a href=\"/healthz\">/healthz</a></footer>\n</body>\n</html>\n",
    );
    out
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30">
<title>regcache status</title>
<style>
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6574; --line: #dde3ea; --accent: #1f6feb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f5f7fa; }
header { background: #16202c; color: #fff; padding: 18px 32px; display: flex; align-items: baseline; gap: 16px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 0; color: #b8c4d3; }
main { padding: 24px 32px; max-width: 1200px; }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
.card h2 { margin: 0 0 6px; font-size: 13px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.card .value { font-size: 32px; font-weight: 700; color: var(--accent); font-variant-numeric: tabular-nums; }
.card p { margin: 4px 0 0; color: var(--muted); font-size: 13px; }
.tables { display: grid; grid-template-columns: 2fr 1fr; gap: 16px; margin-top: 24px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
.panel h2 { margin: 0 0 10px; font-size: 16px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { font-size: 12px; text-transform: uppercase; color: var(--muted); font-weight: 600; }
td.n, th.n { text-align: right; }
.empty { color: var(--muted); }
footer { padding: 0 32px 24px; color: var(--muted); }
footer a { color: var(--accent); }
</style>
</head>
<body>
"#;

/// One figure: `id` names the value element (stable for scripts and tests), `exact` is the
/// unrounded value, `note` is trusted HTML (built here from numbers and constants only).
fn card(out: &mut String, id: &str, title: &str, value: &str, exact: &str, note: &str) {
    let _ = writeln!(
        out,
        "<div class=\"card\"><h2>{}</h2><div class=\"value\" id=\"{id}\" title=\"{}\">{}</div><p>{note}</p></div>",
        escape(title),
        escape(exact),
        escape(value),
    );
}

fn top_images(out: &mut String, s: &Snapshot) {
    out.push_str("<div class=\"panel\"><h2>Top images</h2>\n");
    if s.top_images.is_empty() {
        out.push_str("<p class=\"empty\">No image requested yet.</p></div>\n");
        return;
    }
    out.push_str(
        "<table id=\"top-images\"><thead><tr><th>Registry</th><th>Repository</th>\
         <th class=\"n\">Manifest requests</th></tr></thead><tbody>\n",
    );
    for image in &s.top_images {
        let approx = if image.overestimate > 0 { "≤ " } else { "" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{approx}{}</td></tr>",
            escape(&image.registry),
            escape(&image.repository),
            group(image.requests)
        );
    }
    out.push_str("</tbody></table></div>\n");
}

fn outcomes(out: &mut String, s: &Snapshot) {
    out.push_str(
        "<div class=\"panel\"><h2>Requests by outcome</h2>\n<table id=\"outcomes\"><thead><tr><th>Outcome</th>\
         <th class=\"n\">Requests</th></tr></thead><tbody>\n",
    );
    for (outcome, n) in &s.outcomes {
        // Intercepted CONNECTs are counted through their requests, never as such.
        if *outcome == Outcome::Intercept {
            continue;
        }
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\" id=\"outcome-{}\">{}</td></tr>",
            outcome.as_str(),
            outcome.as_str(),
            group(*n)
        );
    }
    out.push_str("</tbody></table></div>\n");
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units with one decimal (`0 B`, `512 B`, `1.5 KiB`, `3.2 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3d 4h`, `2h 5m`, `7m 12s`, `42s`.
pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ImageCount;
    use crate::telemetry::{Metrics, OUTCOMES};

    fn snapshot() -> Snapshot {
        Metrics::new().snapshot()
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(uptime(Duration::from_secs(42)), "42s");
        assert_eq!(uptime(Duration::from_secs(7 * 60 + 12)), "7m 12s");
        assert_eq!(uptime(Duration::from_secs(2 * 3600 + 5 * 60)), "2h 5m");
        assert_eq!(uptime(Duration::from_secs(3 * 86_400 + 4 * 3600 + 59)), "3d 4h");
    }

    #[test]
    fn a_fresh_proxy_says_unknown_and_no_limit() {
        let html = render(&snapshot());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("id=\"hit-ratio\" title=\"0 of 0\">–</div>"));
        assert!(html.contains("id=\"docker-hub-quota\" title=\"unknown\">unknown</div>"));
        assert!(html.contains("budget: no limit"));
        assert!(html.contains("No image requested yet."));
        assert!(!html.contains("<script"), "no scripts");
        assert!(
            !html.contains("src=") && !html.contains("stylesheet"),
            "no external assets"
        );
    }

    #[test]
    fn figures_come_from_the_snapshot() {
        let mut s = snapshot();
        s.outcomes = OUTCOMES.map(|o| {
            let n = match o {
                Outcome::Hit => 3,
                Outcome::Miss => 1,
                _ => 0,
            };
            (o, n)
        });
        s.cache_served_bytes = 3 * 1024 * 1024;
        s.docker_hub_remaining = Some(76);
        s.cache_entries = 1234;
        let html = render(&s);
        assert!(html.contains("id=\"hit-ratio\" title=\"3 of 4\">75.0%</div>"), "{html}");
        assert!(html.contains("id=\"bytes-saved\" title=\"3145728 bytes\">3.0 MiB</div>"));
        assert!(html.contains("id=\"docker-hub-quota\" title=\"76\">76</div>"));
        assert!(html.contains("<span id=\"cache-entries\">1,234</span>"));
        assert!(html.contains("id=\"outcome-hit\">3</td>"));
    }

    #[test]
    fn names_from_requests_are_escaped() {
        let mut s = snapshot();
        s.top_images = vec![ImageCount {
            registry: "evil.example\"><script>alert(1)</script>".into(),
            repository: "<img src=x onerror=alert(1)>&'".into(),
            requests: 2,
            overestimate: 0,
        }];
        let html = render(&s);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"));
        assert!(html.contains("evil.example&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&#39;"));
    }
}
