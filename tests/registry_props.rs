//! Property tests of request classification (`registry::classify`) and digest parsing, the
//! parsers every hostile path and digest goes through: nothing panics on arbitrary input, valid
//! names, tags and digests round-trip, traversal never classifies as a request that is looked
//! up or forwarded, and a parsed digest's place in the store is always inside the store.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 2000: a few seconds).

use std::path::{Component, Path};

use http::Method;
use proptest::prelude::*;
use regcache::registry::Digest;
use regcache::registry::{ErrorCode, Reference, RegistryRequest, classify};
use regcache::store::LocalStore;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        // No regression files written into the source tree by CI runs.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A name component per the distribution-spec grammar, sometimes one of the words the API
/// uses as path markers (a repository may be called `x/blobs/uploads`).
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,2}",
        1 => prop::sample::select(vec!["manifests", "blobs", "uploads", "tags", "list", "referrers", "v2"])
            .prop_map(String::from),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..5)
        .prop_map(|c| c.join("/"))
        .prop_filter("names are at most 255 bytes", |n| n.len() <= 255)
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn digest() -> impl Strategy<Value = String> {
    let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 32).prop_map(move |b| format!("sha256:{}", hex(b))),
        prop::collection::vec(any::<u8>(), 64).prop_map(move |b| format!("sha512:{}", hex(b))),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ])
}

/// A path segment that is, or decodes to, a traversal, a separator or a control character.
fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2e", "..%2f..", "%2F", "a%2fb", "%5c", "a\\b", "\\",
            "%00", "a%00b", "%0a", "%7F", "\u{0}", "a\u{1}b", "\t",
        ])
        .prop_map(String::from),
        // A valid-looking component with an encoded slash or backslash somewhere inside.
        (
            "[a-z]{1,4}",
            prop::sample::select(vec!["%2f", "%2F", "%5c", "%5C", "%00"]),
            "[a-z]{0,4}"
        )
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

/// Where a request for repository `name` goes, one endpoint of the API each.
fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        tag().prop_map(|t| format!("/manifests/{t}")),
        digest().prop_map(|d| format!("/manifests/{d}")),
        digest().prop_map(|d| format!("/blobs/{d}")),
        digest().prop_map(|d| format!("/referrers/{d}")),
        Just("/tags/list".to_string()),
        Just("/blobs/uploads/".to_string()),
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn classify_never_panics_on_arbitrary_paths(m in method(), path in "\\PC{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = classify(&m, &path);
        let _ = classify(&m, &format!("/v2/{path}"));
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = classify(&m, &format!("/v2/{lossy}"));
        let _ = classify(&m, &format!("/v2/{lossy}/manifests/{lossy}"));
    }

    #[test]
    fn valid_names_tags_and_digests_round_trip(n in name(), t in tag(), d in digest()) {
        for m in [Method::GET, Method::HEAD] {
            prop_assert_eq!(
                classify(&m, &format!("/v2/{n}/manifests/{t}")),
                RegistryRequest::Manifest { name: n.clone(), reference: Reference::Tag(t.clone()) }
            );
            match classify(&m, &format!("/v2/{n}/manifests/{d}")) {
                RegistryRequest::Manifest { name, reference: Reference::Digest(got) } => {
                    prop_assert_eq!(&name, &n);
                    prop_assert_eq!(got.to_string(), d.clone());
                }
                other => prop_assert!(false, "manifest by digest: {:?}", other),
            }
            match classify(&m, &format!("/v2/{n}/blobs/{d}")) {
                RegistryRequest::Blob { name, digest } => {
                    prop_assert_eq!(&name, &n);
                    prop_assert_eq!(digest.to_string(), d.clone());
                }
                other => prop_assert!(false, "blob: {:?}", other),
            }
        }
        prop_assert_eq!(classify(&Method::GET, &format!("/v2/{n}/tags/list")), RegistryRequest::TagList);
        prop_assert_eq!(classify(&Method::GET, &format!("/v2/{n}/referrers/{d}")), RegistryRequest::Referrers);
        prop_assert_eq!(classify(&Method::PUT, &format!("/v2/{n}/manifests/{t}")), RegistryRequest::Write);
        prop_assert_eq!(classify(&Method::POST, &format!("/v2/{n}/blobs/uploads/")), RegistryRequest::Write);
        prop_assert_eq!(classify(&Method::PATCH, &format!("/v2/{n}/blobs/uploads/0f3c-Ab_9")), RegistryRequest::Write);
        prop_assert_eq!(classify(&Method::DELETE, &format!("/v2/{n}/blobs/{d}")), RegistryRequest::Write);
    }

    #[test]
    fn traversal_in_a_name_is_refused_as_name_invalid(
        m in method(),
        parts in prop::collection::vec(component(), 0..4),
        bad in hostile_segment(),
        at in any::<prop::sample::Index>(),
        tail in endpoint(),
    ) {
        let mut segments = parts;
        let i = at.index(segments.len() + 1);
        segments.insert(i, bad);
        let path = format!("/v2/{}{tail}", segments.join("/"));
        match classify(&m, &path) {
            RegistryRequest::Invalid(bad) => prop_assert_eq!(bad.code, ErrorCode::NameInvalid, "{}", path),
            other => prop_assert!(false, "{} classified as {:?}", path, other),
        }
    }

    #[test]
    fn names_outside_the_grammar_are_never_looked_up(
        n in name(),
        t in tag(),
        mangle in prop::sample::select(vec!["upper", "leading-slash", "trailing-slash", "double-slash", "dash-start", "too-long"]),
    ) {
        let bad = match mangle {
            "upper" => format!("{n}X"),
            "leading-slash" => format!("/{n}"),
            "trailing-slash" => format!("{n}/"),
            "double-slash" => n.replacen('/', "//", 1) + "//x",
            "dash-start" => format!("-{n}"),
            _ => format!("{}/{n}", "a".repeat(256)),
        };
        let got = classify(&Method::GET, &format!("/v2/{bad}/manifests/{t}"));
        prop_assert!(
            matches!(&got, RegistryRequest::Invalid(e) if e.code == ErrorCode::NameInvalid),
            "{} → {:?}", bad, got
        );
    }

    #[test]
    fn digests_parse_only_in_canonical_form(s in "\\PC{0,140}", d in digest(), flip in any::<prop::sample::Index>()) {
        // Arbitrary text: never a panic, and what parses prints back as it was written.
        if let Ok(parsed) = s.parse::<Digest>() {
            prop_assert_eq!(parsed.to_string(), s.clone());
        }
        let parsed: Digest = d.parse().expect("canonical digest parses");
        prop_assert_eq!(parsed.to_string(), d.clone());
        let (alg, hex) = d.split_once(':').unwrap();
        prop_assert_eq!(parsed.algorithm().as_str(), alg);
        prop_assert_eq!(parsed.hex(), hex);
        // Upper-case hex, one character short or long, another algorithm: refused.
        let i = flip.index(hex.len());
        let mut upper = hex.to_string();
        upper.replace_range(i..=i, &hex[i..=i].to_ascii_uppercase());
        let mut refused = vec![
            format!("{alg}:{}", &hex[1..]),
            format!("{d}0"),
            format!("md5:{hex}"),
            format!("SHA256:{hex}"),
        ];
        if upper != hex {
            refused.push(format!("{alg}:{upper}"));
        }
        for bad in refused {
            let parsed = bad.parse::<Digest>();
            prop_assert!(parsed.is_err(), "{} parsed", bad);
        }
    }

    #[test]
    fn a_digest_lives_inside_the_store(s in prop_oneof![digest(), "[a-z0-9]{1,8}:[a-zA-Z0-9./%_-]{0,140}"]) {
        let root = Path::new("/var/lib/regcache/data/cache");
        let store = LocalStore::new(root.to_path_buf());
        if let Ok(d) = s.parse::<Digest>() {
            let path = store.content_path(&d);
            prop_assert!(path.starts_with(root), "{}", path.display());
            let below = path.strip_prefix(root).unwrap();
            prop_assert!(below.components().all(|c| matches!(c, Component::Normal(_))), "{}", path.display());
        }
    }
}
