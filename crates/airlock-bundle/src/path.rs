//! Validated relative paths inside a bundle.

use std::fmt;

use crate::{Error, Result};

/// A path inside a bundle: relative, `/`-separated, UTF-8, with no empty, `.` or `..`
/// components, no NUL or backslash, and no leading `/`.
///
/// Untrusted names from tar headers, manifests and directories become a `BundlePath` before
/// anything touches the filesystem with them, so a hostile name can never escape the bundle.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundlePath(String);

impl BundlePath {
    /// Validates `raw` as a bundle path of at most `max_len` bytes.
    pub fn parse(raw: &[u8], max_len: usize) -> Result<Self> {
        let lossy = || String::from_utf8_lossy(raw).into_owned();
        let bad = |reason| {
            Err(Error::UnsafePath {
                path: lossy(),
                reason,
            })
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return bad("not UTF-8");
        };
        if text.is_empty() {
            return bad("empty");
        }
        if text.len() > max_len {
            return bad("too long");
        }
        if text.starts_with('/') {
            return bad("absolute");
        }
        if text.contains('\0') || text.contains('\\') {
            return bad("contains NUL or backslash");
        }
        if text.chars().any(char::is_control) {
            return bad("contains a control character");
        }
        for component in text.split('/') {
            match component {
                "" => return bad("empty component"),
                "." | ".." => return bad("contains . or .."),
                _ => {}
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(raw: &str) -> &'static str {
        match BundlePath::parse(raw.as_bytes(), 100) {
            Err(Error::UnsafePath { reason, .. }) => reason,
            other => panic!("{raw:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn refuses_every_escape() {
        assert_eq!(reason("../etc/passwd"), "contains . or ..");
        assert_eq!(reason("a/../../b"), "contains . or ..");
        assert_eq!(reason("/etc/passwd"), "absolute");
        assert_eq!(reason("a//b"), "empty component");
        assert_eq!(reason("a/"), "empty component");
        assert_eq!(reason("./a"), "contains . or ..");
        assert_eq!(reason("a\\..\\b"), "contains NUL or backslash");
        assert_eq!(reason(""), "empty");
        assert_eq!(reason(&"a".repeat(101)), "too long");
        assert!(matches!(
            BundlePath::parse(b"\xff", 100),
            Err(Error::UnsafePath {
                reason: "not UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn accepts_nested_relative_paths() {
        let p = BundlePath::parse(b"1_Pooling/config.json", 100).unwrap();
        assert_eq!(p.as_str(), "1_Pooling/config.json");
        assert_eq!(p.file_name(), "config.json");
    }
}
