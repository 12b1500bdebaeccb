//! Model references: `name:version`, `name:tag` and `name@sha256:<hex>`.

use std::fmt;

use airlock_bundle::Sha256Digest;

use crate::{Error, Result};

/// What a reference names within a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A semantic version (`1.2.0`).
    Version(semver::Version),
    /// A tag (`prod`).
    Tag(String),
    /// A bundle digest.
    Digest(Sha256Digest),
}

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Model name.
    pub name: String,
    /// Which version.
    pub selector: Selector,
}

/// Checks a bundle or tag name: 1–64 of lower-case letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid {what} {name:?}: use 1-64 lower-case letters, digits, '.', '_', '-'"
        )))
    }
}

impl Reference {
    /// Parses `name:version`, `name:tag` or `name@sha256:<64 hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let usage = || {
            Error::Usage(format!(
                "invalid reference {text:?}: expected NAME:VERSION, NAME:TAG or NAME@sha256:HEX"
            ))
        };
        if let Some((name, digest)) = text.split_once('@') {
            check_name("model name", name)?;
            let hex = digest.strip_prefix("sha256:").ok_or_else(usage)?;
            let digest = Sha256Digest::from_hex(hex).ok_or_else(usage)?;
            return Ok(Self {
                name: name.to_owned(),
                selector: Selector::Digest(digest),
            });
        }
        let (name, rest) = text.split_once(':').ok_or_else(usage)?;
        check_name("model name", name)?;
        let selector = if rest.starts_with(|c: char| c.is_ascii_digit()) {
            Selector::Version(parse_version(rest)?)
        } else {
            check_name("tag", rest)?;
            Selector::Tag(rest.to_owned())
        };
        Ok(Self {
            name: name.to_owned(),
            selector,
        })
    }

    /// Parses `name:version` only (approve, reject, tag, exceptions name exact versions).
    pub fn parse_exact(text: &str) -> Result<(String, semver::Version)> {
        match Self::parse(text)? {
            Self {
                name,
                selector: Selector::Version(v),
            } => Ok((name, v)),
            _ => Err(Error::Usage(format!(
                "{text:?} must name an exact version, NAME:X.Y.Z"
            ))),
        }
    }
}

/// Parses a semantic version, refusing build metadata (which semver ignores in ordering, so
/// two different bundles could claim the same place).
pub fn parse_version(text: &str) -> Result<semver::Version> {
    let v = semver::Version::parse(text)
        .map_err(|e| Error::Usage(format!("invalid version {text:?}: {e}")))?;
    if !v.build.is_empty() {
        return Err(Error::Usage(format!(
            "invalid version {text:?}: build metadata (+...) is not allowed"
        )));
    }
    Ok(v)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Version(v) => write!(f, "{}:{v}", self.name),
            Selector::Tag(t) => write!(f, "{}:{t}", self.name),
            Selector::Digest(d) => write!(f, "{}@sha256:{d}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse_and_print_back() {
        for text in [
            "smollm2:1.0.0",
            "smollm2:prod",
            "smollm2@sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            assert_eq!(Reference::parse(text).unwrap().to_string(), text);
        }
        assert!(matches!(
            Reference::parse("m:1.2.3-rc.1").unwrap().selector,
            Selector::Version(_)
        ));
    }

    #[test]
    fn malformed_references_are_usage_errors() {
        for text in [
            "",
            "m",
            ":1.0.0",
            "M:1.0.0",
            "m:1.0",
            "m:1.0.0+build",
            "m@sha256:xy",
            "m:Prod",
            "m@md5:00",
        ] {
            assert!(
                matches!(Reference::parse(text), Err(Error::Usage(_))),
                "{text}"
            );
        }
        assert!(Reference::parse_exact("m:prod").is_err());
    }
}
