//! Parsers of untrusted documents into [`Parsed`] blocks, each with limits on what it reads.
//!
//! Every parser is iterative (no recursion a deep document could exhaust), bounds what it
//! produces ([`ParseLimits`]), and fails with a one-line reason. Parsing runs in a separate
//! process ([`worker`]) so that a parser that panics, loops or runs out of memory fails its
//! document alone.

mod docx;
mod export;
mod html;
mod markdown;
mod pdf;
mod text;
pub mod worker;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::document::Parsed;

/// Ceilings on what one document may make a parser read or produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseLimits {
    /// Largest input file, bytes.
    pub max_file_bytes: u64,
    /// Most text extracted from one document, bytes.
    pub max_text_bytes: usize,
    /// Most pages of a PDF.
    pub max_pages: usize,
    /// Deepest nesting of HTML elements, JSON values or XML elements.
    pub max_nesting: usize,
    /// Most bytes a compressed container (DOCX) may unpack to.
    pub max_unpacked_bytes: u64,
    /// Most entries in a compressed container.
    pub max_entries: usize,
    /// Most documents in one export file.
    pub max_export_documents: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_text_bytes: 16 << 20,
            max_pages: 5000,
            max_nesting: 256,
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
            max_export_documents: 100_000,
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Plain text (and source code).
    Text,
    /// Markdown (CommonMark with tables).
    Markdown,
    /// HTML.
    Html,
    /// PDF with a text layer.
    Pdf,
    /// Word (Office Open XML).
    Docx,
    /// JSON: a Jira issue search export or a Confluence content export.
    Json,
}

impl Format {
    /// The format a file's name says, if it is one this crate reads.
    pub fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        Some(match ext.as_str() {
            "txt" | "text" | "log" | "csv" | "tsv" | "rst" | "adoc" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            "html" | "htm" | "xhtml" => Self::Html,
            "pdf" => Self::Pdf,
            "docx" => Self::Docx,
            "json" => Self::Json,
            _ => return None,
        })
    }

    /// The name reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
            Self::Docx => "docx",
            Self::Json => "json",
        }
    }
}

/// One document a file yields: the file itself, or one record of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The record's id in an export (`PROJ-12`, a Confluence page id); `None` for a file that
    /// is one document.
    pub key: Option<String>,
    /// What kind of document it is (`jira`, `confluence`, or the file's format).
    pub kind: String,
    /// SHA-256 of the record's bytes (for an export record) — a file's own hash is taken by
    /// whoever read it.
    pub content_sha256: Option<String>,
    /// Its blocks.
    pub parsed: Parsed,
}

/// Parses `bytes` as `format`: one item, or one per record of an export.
pub fn parse(bytes: &[u8], format: Format, limits: &ParseLimits) -> Result<Vec<Item>, String> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(over("the file", bytes.len() as u64, limits.max_file_bytes));
    }
    let one = |parsed: Parsed| {
        vec![Item {
            key: None,
            kind: format.as_str().to_owned(),
            content_sha256: None,
            parsed,
        }]
    };
    let items = match format {
        Format::Text => one(text::parse(utf8(bytes)?, limits)?),
        Format::Markdown => one(markdown::parse(utf8(bytes)?, limits)?),
        Format::Html => one(html::parse(&String::from_utf8_lossy(bytes), limits)?),
        Format::Pdf => one(pdf::parse(bytes, limits)?),
        Format::Docx => one(docx::parse(bytes, limits)?),
        Format::Json => export::parse(bytes, limits)?,
    };
    for item in &items {
        let len = item.parsed.text_len();
        if len > limits.max_text_bytes {
            return Err(over("its text", len as u64, limits.max_text_bytes as u64));
        }
    }
    Ok(items)
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        )
    })
}

/// "WHAT is N bytes, over the LIMIT-byte limit", with sizes in their easiest unit.
pub(crate) fn over(what: &str, size: u64, limit: u64) -> String {
    format!(
        "{what} is {}, over the {} limit",
        human_bytes(size),
        human_bytes(limit)
    )
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Collapses runs of whitespace to one space and trims.
pub(crate) fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_file_names() {
        assert_eq!(Format::from_name("a/b/Notes.MD"), Some(Format::Markdown));
        assert_eq!(Format::from_name("x.pdf"), Some(Format::Pdf));
        assert_eq!(Format::from_name("export.json"), Some(Format::Json));
        assert_eq!(Format::from_name("image.png"), None);
        assert_eq!(Format::from_name("Makefile"), None);
    }

    #[test]
    fn sizes_are_named_in_their_unit() {
        assert_eq!(
            over("the file", 1 << 30, 64 << 20),
            "the file is 1.0 GiB, over the 64.0 MiB limit"
        );
        assert_eq!(human_bytes(12), "12 bytes");
    }

    use proptest::prelude::*;

    /// Limits small enough for generated inputs to reach them.
    fn small_limits() -> ParseLimits {
        ParseLimits {
            max_file_bytes: 1 << 16,
            max_text_bytes: 2048,
            max_pages: 4,
            max_nesting: 16,
            max_unpacked_bytes: 1 << 16,
            max_entries: 16,
            max_export_documents: 8,
        }
    }

    /// Whatever a parser returns keeps to the limits.
    fn within_limits(result: Result<Vec<Item>, String>, limits: &ParseLimits) -> bool {
        match result {
            Ok(items) => {
                items.len() <= limits.max_export_documents.max(1)
                    && items
                        .iter()
                        .all(|i| i.parsed.text_len() <= limits.max_text_bytes)
            }
            Err(line) => !line.is_empty() && !line.contains('\n'),
        }
    }

    // PDF is left out: the PDF library is known to panic on malformed files, which is why every
    // parser runs in a worker process (see the hostile-document tests); these properties hold
    // for the parsers that run in process too.
    fn in_process_format() -> impl Strategy<Value = Format> {
        prop_oneof![
            Just(Format::Text),
            Just(Format::Markdown),
            Just(Format::Html),
            Just(Format::Docx),
            Just(Format::Json),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_give_items_within_the_limits_or_one_line(
            format in in_process_format(),
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let limits = small_limits();
            prop_assert!(within_limits(parse(&bytes, format, &limits), &limits));
        }

        #[test]
        fn nesting_past_the_limit_is_refused_or_flattened_never_a_stack_overflow(
            depth in 0usize..5000,
            tag in prop_oneof![Just("div"), Just("b"), Just("table"), Just("li")],
        ) {
            let limits = small_limits();
            let html = format!("{}text{}", format!("<{tag}>").repeat(depth), format!("</{tag}>").repeat(depth));
            prop_assert!(within_limits(parse(html.as_bytes(), Format::Html, &limits), &limits));
            let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            prop_assert!(within_limits(parse(json.as_bytes(), Format::Json, &limits), &limits));
            let markdown = format!("{}quote", "> ".repeat(depth));
            prop_assert!(within_limits(parse(markdown.as_bytes(), Format::Markdown, &limits), &limits));
        }

        #[test]
        fn a_word_document_with_bytes_changed_is_read_or_refused(
            changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            use airlock_testkit::documents::{DocxBlock, docx};
            let mut bytes = docx(&[
                DocxBlock::Heading(1, "Scope".into()),
                DocxBlock::Paragraph("The policy covers every site.".into()),
                DocxBlock::Table(vec![vec!["Site".into(), "Owner".into()], vec!["North".into(), "Ops".into()]]),
            ]);
            for (at, byte) in changes {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let limits = small_limits();
            prop_assert!(within_limits(parse(&bytes, Format::Docx, &limits), &limits));
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_with_where() {
        let err = parse(b"ok\xff", Format::Text, &ParseLimits::default()).unwrap_err();
        assert!(err.contains("offset 2"), "{err}");
    }
}
