//! What a parser makes of a document: its blocks in reading order, each with where it stands.
//!
//! Blocks keep the structure chunking needs: headings (which become the heading path of what
//! follows), paragraphs, code, and tables with their header row kept apart from their rows.

use serde::{Deserialize, Serialize};

/// Where a block stands in its source, for citations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Location {
    /// Lines of a text file (1-based, inclusive).
    Lines {
        /// First line.
        first: u32,
        /// Last line.
        last: u32,
    },
    /// A page of a paginated document (1-based).
    Page {
        /// The page.
        page: u32,
    },
    /// The n-th block of a document without lines or pages (1-based).
    Block {
        /// Its ordinal.
        index: u32,
    },
}

impl Location {
    /// A short human form: `lines 3-9`, `page 2`, `block 4`.
    pub fn describe(&self) -> String {
        match self {
            Self::Lines { first, last } if first == last => format!("line {first}"),
            Self::Lines { first, last } => format!("lines {first}-{last}"),
            Self::Page { page } => format!("page {page}"),
            Self::Block { index } => format!("block {index}"),
        }
    }

    /// The span covering `self` and `other` (the first's kind wins if they differ).
    pub fn merge(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Lines { first, last }, Self::Lines { first: f, last: l }) => Self::Lines {
                first: (*first).min(*f),
                last: (*last).max(*l),
            },
            (Self::Page { page }, Self::Page { page: p }) if p < page => Self::Page { page: *p },
            (Self::Block { index }, Self::Block { index: i }) if i < index => {
                Self::Block { index: *i }
            }
            (this, _) => this.clone(),
        }
    }
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// A heading at `level` (1 is the highest); it names the section that follows.
    Heading {
        /// 1 to 6.
        level: u8,
        /// Its text.
        text: String,
        /// Where it stands.
        at: Location,
    },
    /// Running text (a paragraph, a list item, a quote).
    Text {
        /// The text.
        text: String,
        /// Where it stands.
        at: Location,
    },
    /// Preformatted text, kept as it is.
    Code {
        /// The text.
        text: String,
        /// Where it stands.
        at: Location,
    },
    /// A table: its header row and its body rows.
    Table {
        /// Column names (may be empty when the table has no header).
        header: Vec<String>,
        /// The rows.
        rows: Vec<Vec<String>>,
        /// Where it stands.
        at: Location,
    },
}

impl Block {
    /// Where the block stands.
    pub fn location(&self) -> &Location {
        match self {
            Self::Heading { at, .. }
            | Self::Text { at, .. }
            | Self::Code { at, .. }
            | Self::Table { at, .. } => at,
        }
    }
}

/// A parsed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    /// Its title, if the source has one.
    pub title: Option<String>,
    /// Fields an export carries that rules may match (a Confluence space, a Jira security
    /// level), as `name` → value.
    pub fields: Vec<(String, String)>,
    /// Its blocks in reading order.
    pub blocks: Vec<Block>,
}

impl Parsed {
    /// A document of `blocks` with no title or fields.
    pub fn of(blocks: Vec<Block>) -> Self {
        Self {
            title: None,
            fields: Vec::new(),
            blocks,
        }
    }

    /// Characters of text it holds.
    pub fn text_len(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Heading { text, .. }
                | Block::Text { text, .. }
                | Block::Code { text, .. } => text.len(),
                Block::Table { header, rows, .. } => {
                    header.iter().map(String::len).sum::<usize>()
                        + rows.iter().flatten().map(String::len).sum::<usize>()
                }
            })
            .sum()
    }
}
