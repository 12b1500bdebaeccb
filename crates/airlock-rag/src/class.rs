//! Data classes, ordered from least to most sensitive, and what a caller may read.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The classes of a collection, least sensitive first (`public < internal < confidential <
/// secret` unless the collection was created with others).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes(Vec<String>);

/// The default order.
pub const DEFAULT_CLASSES: [&str; 4] = ["public", "internal", "confidential", "secret"];

/// Most classes a collection may define.
const MAX_CLASSES: usize = 32;

impl Default for Classes {
    fn default() -> Self {
        Self(DEFAULT_CLASSES.iter().map(|c| (*c).to_owned()).collect())
    }
}

impl Classes {
    /// Classes in the given order, least sensitive first. Names are 1-64 lowercase letters,
    /// digits, `-` or `_`, each once.
    pub fn new(names: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() || names.len() > MAX_CLASSES {
            return Err(Error::Usage(format!(
                "a collection needs 1 to {MAX_CLASSES} classes, got {}",
                names.len()
            )));
        }
        for (i, name) in names.iter().enumerate() {
            check_name("class", name)?;
            if names[..i].contains(name) {
                return Err(Error::Usage(format!("class {name:?} is listed twice")));
            }
        }
        Ok(Self(names))
    }

    /// The rank of `name` (0 is the least sensitive); an unknown class is an error, never
    /// the lowest.
    pub fn rank(&self, name: &str) -> Result<u32> {
        self.0
            .iter()
            .position(|c| c == name)
            .map(|p| p as u32)
            .ok_or_else(|| Error::UnknownClass {
                class: name.to_owned(),
                known: self.0.join(", "),
            })
    }

    /// The class at `rank`.
    pub fn name(&self, rank: u32) -> Option<&str> {
        self.0.get(rank as usize).map(String::as_str)
    }

    /// The least sensitive class.
    pub fn lowest(&self) -> &str {
        // INVARIANT: `new` refuses an empty list.
        self.0.first().map_or("public", String::as_str)
    }

    /// The names, least sensitive first.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Checks a class or group name: 1-64 lowercase ASCII letters, digits, `-`, `_`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} {name:?}: use 1-64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// What a caller may read: chunks of its class rank or lower, and of documents that are
/// either open to all groups or share a group with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearance {
    /// The most sensitive class rank it may read.
    pub rank: u32,
    /// Its access groups.
    pub groups: Vec<String>,
}

impl Clearance {
    /// `class` of `classes`, with `groups`.
    pub fn new(classes: &Classes, class: &str, groups: Vec<String>) -> Result<Self> {
        Ok(Self {
            rank: classes.rank(class)?,
            groups,
        })
    }

    /// Whether a chunk of `rank` and access `groups` (empty: open to every group) may be read.
    pub fn admits(&self, rank: u32, groups: &[String]) -> bool {
        rank <= self.rank && (groups.is_empty() || groups.iter().any(|g| self.groups.contains(g)))
    }
}

/// What a record kept outside the collection (airlock's audit log) says its classes are and
/// each document's class and groups. A collection given one ([`Collection::attest`]) lets a
/// search see only the live chunks of documents it names, at that class and with those
/// groups: a class lowered in the database alone hides the document instead of showing it,
/// and a database whose classes differ from the record's shows nothing.
///
/// [`Collection::attest`]: crate::Collection::attest
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attested {
    classes: Vec<String>,
    /// Document id → its class rank among `classes` and its groups, sorted.
    documents: HashMap<String, (u32, Vec<String>)>,
}

impl Attested {
    /// The record: `classes`, least sensitive first, and each document's id, class and
    /// groups. A document whose class is not one of `classes` is left out, so hidden.
    pub fn new(
        classes: Vec<String>,
        documents: impl IntoIterator<Item = (String, String, Vec<String>)>,
    ) -> Self {
        let documents = documents
            .into_iter()
            .filter_map(|(id, class, mut groups)| {
                let rank = classes.iter().position(|c| *c == class)? as u32;
                groups.sort();
                groups.dedup();
                Some((id, (rank, groups)))
            })
            .collect();
        Self { classes, documents }
    }

    /// The classes it records.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Whether a live chunk of `document` at class `rank` with `groups` is as recorded.
    pub(crate) fn admits(&self, document: &str, rank: u32, groups: &[String]) -> bool {
        self.documents.get(document).is_some_and(|(r, g)| {
            *r == rank && {
                let mut groups = groups.to_vec();
                groups.sort();
                groups.dedup();
                groups == *g
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_ordered_and_an_unknown_one_is_an_error_not_the_lowest() -> Result<()> {
        let classes = Classes::default();
        assert_eq!(classes.rank("public")?, 0);
        assert_eq!(classes.rank("secret")?, 3);
        assert!(matches!(
            classes.rank("top-secret"),
            Err(Error::UnknownClass { .. })
        ));
        let custom = Classes::new(["green", "amber", "red"])?;
        assert_eq!(custom.rank("red")?, 2);
        assert_eq!(custom.lowest(), "green");
        assert!(Classes::new(["a", "a"]).is_err());
        assert!(Classes::new(Vec::<String>::new()).is_err());
        assert!(Classes::new(["Not OK"]).is_err());
        Ok(())
    }

    #[test]
    fn a_clearance_admits_its_rank_and_below_and_only_shared_groups() {
        let clearance = Clearance {
            rank: 1,
            groups: vec!["hr".into()],
        };
        assert!(clearance.admits(0, &[]));
        assert!(clearance.admits(1, &[]));
        assert!(!clearance.admits(2, &[]));
        assert!(clearance.admits(1, &["hr".into(), "legal".into()]));
        assert!(!clearance.admits(0, &["legal".into()]));
    }
}
