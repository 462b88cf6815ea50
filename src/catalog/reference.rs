//! The references `regcache cache rm` and `DELETE /_regcache/cache/<ref>` take: a registry
//! (`ghcr.io`), a repository (`ghcr.io/org/app`), a glob over repositories or tags
//! (`ghcr.io/org/*`, `ghcr.io/org/app:1.*`), a tag (`ghcr.io/org/app:1.2`), an image by digest
//! (`ghcr.io/org/app@sha256:…`) or a bare digest (`sha256:…`). Names without a registry are
//! Docker Hub's, as `docker pull` reads them (`alpine` is `docker.io/library/alpine`), and
//! registries are spelled as cache keys spell them (`registry-1.docker.io` is `docker.io`).

use std::str::FromStr;

use crate::catalog::inventory::canonical_registry_name;
use crate::registry::Digest;

/// A name or a glob.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Matches itself.
    Exact(String),
    /// Matches what the glob matches (`*` also crosses `/`, as in `--tag-ttl-rule`).
    Glob(globset::GlobMatcher),
}

impl Pattern {
    /// A glob when `s` has glob characters, else the exact name.
    ///
    /// # Errors
    /// A malformed glob.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.contains(['*', '?', '[', '{']) {
            let g = globset::Glob::new(s).map_err(|e| format!("bad glob {s:?}: {e}"))?;
            Ok(Self::Glob(g.compile_matcher()))
        } else {
            Ok(Self::Exact(s.to_string()))
        }
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => e == s,
            Self::Glob(g) => g.is_match(s),
        }
    }
}

/// What `cache rm` is asked to remove.
#[derive(Debug, Clone)]
pub enum PurgeRef {
    /// A bare digest: that content, every manifest entry of it and every tag pointing at it.
    Digest(Digest),
    /// Everything of the matching registries.
    Registry(Pattern),
    /// Everything of the matching repositories.
    Repository(Pattern, Pattern),
    /// The matching tags, and what only they lead to.
    Tag(Pattern, Pattern, Pattern),
    /// One image by digest in a repository, and what only it leads to.
    Image(Pattern, Pattern, Digest),
}

impl FromStr for PurgeRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let usage = || {
            format!(
                "{s:?}: expected a registry (ghcr.io), repository (ghcr.io/org/app), glob (ghcr.io/org/*), \
                 tag (ghcr.io/org/app:1.2), image (ghcr.io/org/app@sha256:…) or digest (sha256:…)"
            )
        };
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(usage());
        }
        if (s.starts_with("sha256:") || s.starts_with("sha512:")) && !s.contains('/') {
            return s.parse().map(Self::Digest).map_err(|e| format!("{s:?}: {e}"));
        }
        let (name, digest) = match s.rsplit_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| format!("{s:?}: {e}"))?)),
            None => (s, None),
        };
        let (registry, path) = split_registry(name);
        let registry = if registry.contains(['*', '?', '[', '{']) {
            Pattern::new(&registry.to_ascii_lowercase())?
        } else {
            Pattern::Exact(canonical_registry_name(registry).map_err(|e| format!("{s:?}: {e}"))?)
        };
        let Some(path) = path.filter(|p| !p.is_empty()) else {
            return match digest {
                None => Ok(Self::Registry(registry)),
                Some(_) => Err(usage()),
            };
        };
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (path, None),
        };
        let repo_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*?[]{},".contains(c);
        let tag_ok = |c: char| c.is_ascii_alphanumeric() || "._-*?[]{},".contains(c);
        if repo.is_empty() || !repo.chars().all(repo_ok) || tag.is_some_and(|t| t.is_empty() || !t.chars().all(tag_ok))
        {
            return Err(usage());
        }
        let repo = match &registry {
            Pattern::Exact(r) if !repo.contains(['*', '?', '[', '{']) => crate::registry::canonical_repository(r, repo),
            _ => repo.to_string(),
        };
        let repo = Pattern::new(&repo)?;
        Ok(match (tag, digest) {
            (Some(_), Some(_)) => return Err(format!("{s:?}: give a tag or a digest, not both")),
            (Some(t), None) => Self::Tag(registry, repo, Pattern::new(t)?),
            (None, Some(d)) => Self::Image(registry, repo, d),
            (None, None) => Self::Repository(registry, repo),
        })
    }
}

/// `docker pull`'s rule: the first component is a registry when it has a dot or a port or is
/// `localhost`; otherwise the name is Docker Hub's. A name without `/` is a registry when it
/// looks like a host (`ghcr.io`, `localhost:5000`), since `cache rm` purges whole registries.
fn split_registry(name: &str) -> (&str, Option<&str>) {
    let localhost = |c: &str| c == "localhost" || c.starts_with("localhost:");
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || localhost(first) => (first, Some(rest)),
        Some(_) => ("docker.io", Some(name)),
        None => {
            // `alpine:3.20` is a tag; `ghcr.io` and `reg.local:5000` are hosts.
            let host = name.split_once(':').map_or(name, |(h, _)| h);
            if host.contains('.') || localhost(name) {
                (name, None)
            } else {
                ("docker.io", Some(name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker_names() {
        let p = |s: &str| s.parse::<PurgeRef>();
        assert!(matches!(p("ghcr.io"), Ok(PurgeRef::Registry(Pattern::Exact(r))) if r == "ghcr.io"));
        assert!(matches!(p("localhost:5000"), Ok(PurgeRef::Registry(Pattern::Exact(r))) if r == "localhost:5000"));
        assert!(matches!(p("ghcr.io:443/"), Ok(PurgeRef::Registry(Pattern::Exact(r))) if r == "ghcr.io"));
        assert!(matches!(
            p("registry-1.docker.io/alpine"),
            Ok(PurgeRef::Repository(Pattern::Exact(r), Pattern::Exact(n))) if r == "docker.io" && n == "library/alpine"
        ));
        assert!(matches!(
            p("alpine:3.20"),
            Ok(PurgeRef::Tag(Pattern::Exact(r), Pattern::Exact(n), Pattern::Exact(t)))
                if r == "docker.io" && n == "library/alpine" && t == "3.20"
        ));
        assert!(matches!(
            p("localhost:5000/org/app:1.2"),
            Ok(PurgeRef::Tag(Pattern::Exact(r), Pattern::Exact(n), _)) if r == "localhost:5000" && n == "org/app"
        ));
        assert!(matches!(
            p("ghcr.io/org/*"),
            Ok(PurgeRef::Repository(_, Pattern::Glob(_)))
        ));
        assert!(matches!(
            p("ghcr.io/org/app:1.*"),
            Ok(PurgeRef::Tag(_, _, Pattern::Glob(_)))
        ));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(p(&d), Ok(PurgeRef::Digest(_))));
        assert!(matches!(p(&format!("ghcr.io/org/app@{d}")), Ok(PurgeRef::Image(..))));
        for bad in [
            "",
            "sha256:xyz",
            "ghcr.io/Org/App",
            "ghcr.io/org/app:",
            "ghcr.io/org app",
            "ghcr.io/org/app:1@sha256:aa",
            "ghcr.io/[",
            "not a host/x",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
