//! A rules file: which class and access groups a document gets, by its path or by fields of
//! its export (a Confluence space, a Jira security level).
//!
//! ```toml
//! [[rule]]
//! path = "hr/**"               # a glob on the document's path under the ingested root
//! class = "confidential"
//! groups = ["hr"]
//!
//! [[rule]]
//! field = "security"           # an export field ...
//! equals = "Staff only"        # ... and its value
//! class = "secret"
//! ```
//!
//! The first rule that matches decides; a document no rule matches gets the class given to
//! the ingest (`--class`), else the collection's default.

use std::path::Path;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::class::{Classes, check_name};
use crate::{Error, Result};

/// Most rules one file may hold.
const MAX_RULES: usize = 1024;
/// Largest rules file.
const MAX_RULES_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: Option<String>,
    field: Option<String>,
    equals: Option<String>,
    class: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug)]
enum Matcher {
    Path(GlobMatcher),
    Field { name: String, value: String },
}

#[derive(Debug)]
struct Rule {
    matcher: Matcher,
    class: String,
    groups: Vec<String>,
}

/// Rules read from a file and checked against a collection's classes.
#[derive(Debug, Default)]
pub struct Rules(Vec<Rule>);

/// The class and groups a document gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Its class.
    pub class: String,
    /// Its access groups (empty: open to every group of its class).
    pub groups: Vec<String>,
}

impl Rules {
    /// Reads a rules file; every class must be one of `classes`.
    pub fn load(path: &Path, classes: &Classes) -> Result<Self> {
        let io = |e| Error::Io {
            path: path.to_owned(),
            source: e,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_RULES_BYTES {
            return Err(Error::Rules(format!(
                "{}: {size} bytes, over the {MAX_RULES_BYTES}-byte limit",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, classes).map_err(|e| match e {
            Error::Rules(reason) => Error::Rules(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// Parses rules text.
    pub fn parse(text: &str, classes: &Classes) -> Result<Self> {
        let raw: RawRules =
            toml::from_str(text).map_err(|e| Error::Rules(e.message().to_owned()))?;
        if raw.rule.len() > MAX_RULES {
            return Err(Error::Rules(format!("more than {MAX_RULES} rules")));
        }
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (n, rule) in raw.rule.into_iter().enumerate() {
            let at = |reason: String| Error::Rules(format!("rule {}: {reason}", n + 1));
            classes.rank(&rule.class).map_err(|e| at(e.to_string()))?;
            for group in &rule.groups {
                check_name("group", group).map_err(|e| at(e.to_string()))?;
            }
            let matcher = match (rule.path, rule.field, rule.equals) {
                (Some(glob), None, None) => Matcher::Path(
                    Glob::new(&glob)
                        .map_err(|e| at(format!("path {glob:?}: {e}")))?
                        .compile_matcher(),
                ),
                (None, Some(name), Some(value)) => Matcher::Field { name, value },
                _ => {
                    return Err(at(
                        "give either path = GLOB, or field = NAME with equals = VALUE".into(),
                    ));
                }
            };
            rules.push(Rule {
                matcher,
                class: rule.class,
                groups: rule.groups,
            });
        }
        Ok(Self(rules))
    }

    /// The first matching rule's class and groups for a document at `path` (relative to its
    /// ingested root, `/`-separated) with export `fields`.
    pub fn classify(&self, path: &str, fields: &[(String, String)]) -> Option<Classification> {
        self.0
            .iter()
            .find(|rule| match &rule.matcher {
                Matcher::Path(glob) => glob.is_match(path),
                Matcher::Field { name, value } => {
                    fields.iter().any(|(n, v)| n == name && v == value)
                }
            })
            .map(|rule| Classification {
                class: rule.class.clone(),
                groups: rule.groups.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides_by_path_or_export_field() -> Result<()> {
        let rules = Rules::parse(
            r#"
            [[rule]]
            path = "hr/**"
            class = "confidential"
            groups = ["hr"]
            [[rule]]
            field = "space"
            equals = "SEC"
            class = "secret"
            [[rule]]
            path = "**/*.md"
            class = "internal"
            "#,
            &Classes::default(),
        )?;
        let hr = rules
            .classify("hr/pay/2026.md", &[])
            .map(|c| (c.class, c.groups));
        assert_eq!(hr, Some(("confidential".into(), vec!["hr".into()])));
        assert_eq!(
            rules
                .classify("wiki/page", &[("space".into(), "SEC".into())])
                .map(|c| c.class),
            Some("secret".into())
        );
        assert_eq!(
            rules.classify("docs/a.md", &[]).map(|c| c.class),
            Some("internal".into())
        );
        assert_eq!(rules.classify("docs/a.txt", &[]), None);
        Ok(())
    }

    #[test]
    fn a_rule_with_an_unknown_class_or_no_matcher_is_refused() {
        for text in [
            "[[rule]]\npath = \"*\"\nclass = \"top-secret\"",
            "[[rule]]\nclass = \"public\"",
            "[[rule]]\npath = \"*\"\nfield = \"x\"\nequals = \"y\"\nclass = \"public\"",
            "[[rule]]\npath = \"[\"\nclass = \"public\"",
            "[[rule]]\npath = \"*\"\nclass = \"public\"\ncolour = \"red\"",
            "[[rule]]\npath = \"*\"\nclass = \"public\"\ngroups = [\"Bad Group\"]",
        ] {
            assert!(
                matches!(
                    Rules::parse(text, &Classes::default()),
                    Err(Error::Rules(_))
                ),
                "{text}"
            );
        }
    }
}
