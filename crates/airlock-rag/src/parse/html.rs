//! HTML (and Confluence's storage format, which is XHTML): headings, paragraphs, list items,
//! preformatted text and tables, from a streaming tokenizer with no tree and no recursion.
//! Scripts, styles and other non-content elements are dropped.

use html5gum::{Token, Tokenizer};

use super::{ParseLimits, squeeze};
use crate::document::{Block, Location, Parsed};

/// Elements whose end closes nothing to count (void elements).
const VOID: [&str; 14] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];
/// Elements whose content is not text for a reader.
const HIDDEN: [&str; 5] = ["script", "style", "noscript", "template", "svg"];
/// Elements that end the running paragraph.
const BREAKS: [&str; 16] = [
    "p",
    "div",
    "li",
    "dd",
    "dt",
    "blockquote",
    "section",
    "article",
    "br",
    "tr",
    "ul",
    "ol",
    "body",
    "main",
    "header",
    "footer",
];

/// A table being read.
#[derive(Default)]
struct TableState {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
    header_row: bool,
    in_head: bool,
}

struct Builder {
    blocks: Vec<Block>,
    text: String,
    heading: Option<u8>,
    pre: usize,
    tables: Vec<TableState>,
}

impl Builder {
    fn at(&self) -> Location {
        Location::Block {
            index: self.blocks.len() as u32 + 1,
        }
    }

    /// Ends the running text as a block of its kind.
    fn flush(&mut self) {
        if self.pre > 0 {
            return;
        }
        let text = squeeze(&std::mem::take(&mut self.text));
        if text.is_empty() {
            return;
        }
        let at = self.at();
        self.blocks.push(match self.heading {
            Some(level) => Block::Heading { level, text, at },
            None => Block::Text { text, at },
        });
    }
}

pub(super) fn parse(source: &str, limits: &ParseLimits) -> Result<Parsed, String> {
    let mut b = Builder {
        blocks: Vec::new(),
        text: String::new(),
        heading: None,
        pre: 0,
        tables: Vec::new(),
    };
    let mut title = None;
    let mut in_title = false;
    let mut title_text = String::new();
    let mut hidden: Option<(String, usize)> = None;
    let mut depth = 0usize;
    for token in Tokenizer::new(source).flatten() {
        match token {
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                let void = tag.self_closing || VOID.contains(&name.as_str());
                if !void {
                    depth += 1;
                    if depth > limits.max_nesting {
                        return Err(format!(
                            "elements are nested more than {} deep",
                            limits.max_nesting
                        ));
                    }
                }
                if let Some((_, count)) = hidden.as_mut() {
                    if !void {
                        *count += 1;
                    }
                    continue;
                }
                if HIDDEN.contains(&name.as_str()) && !void {
                    hidden = Some((name, 1));
                    continue;
                }
                match name.as_str() {
                    "title" => in_title = true,
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if b.tables.is_empty() => {
                        b.flush();
                        b.heading = name[1..].parse().ok();
                    }
                    "pre" if b.tables.is_empty() => {
                        b.flush();
                        b.pre += 1;
                    }
                    "table" => {
                        b.flush();
                        b.tables.push(TableState::default());
                    }
                    "thead" => {
                        if let Some(t) = b.tables.last_mut() {
                            t.in_head = true;
                        }
                    }
                    "tr" => {
                        if let Some(t) = b.tables.last_mut() {
                            t.row.clear();
                            t.header_row = t.in_head;
                        }
                    }
                    "td" | "th" => {
                        if let Some(t) = b.tables.last_mut() {
                            t.cell.clear();
                            if name == "th" && t.rows.is_empty() && t.header.is_empty() {
                                t.header_row = true;
                            }
                        }
                    }
                    other if BREAKS.contains(&other) && b.tables.is_empty() => b.flush(),
                    _ => {}
                }
            }
            Token::EndTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).to_ascii_lowercase();
                if VOID.contains(&name.as_str()) {
                    continue;
                }
                depth = depth.saturating_sub(1);
                if let Some((_, count)) = hidden.as_mut() {
                    *count -= 1;
                    if *count == 0 {
                        hidden = None;
                    }
                    continue;
                }
                match name.as_str() {
                    "title" => {
                        in_title = false;
                        let text = squeeze(&title_text);
                        if !text.is_empty() {
                            title = Some(text);
                        }
                    }
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if b.tables.is_empty() => {
                        b.flush();
                        b.heading = None;
                    }
                    "pre" if b.pre > 0 => {
                        b.pre -= 1;
                        if b.pre == 0 {
                            let text = std::mem::take(&mut b.text).trim_matches('\n').to_owned();
                            if !text.trim().is_empty() {
                                let at = b.at();
                                b.blocks.push(Block::Code { text, at });
                            }
                        }
                    }
                    "thead" => {
                        if let Some(t) = b.tables.last_mut() {
                            t.in_head = false;
                        }
                    }
                    "td" | "th" => {
                        if let Some(t) = b.tables.last_mut() {
                            let cell = squeeze(&t.cell);
                            t.row.push(cell);
                        }
                    }
                    "tr" => {
                        if let Some(t) = b.tables.last_mut() {
                            let row = std::mem::take(&mut t.row);
                            if t.header_row && t.header.is_empty() && t.rows.is_empty() {
                                t.header = row;
                            } else if !row.is_empty() {
                                t.rows.push(row);
                            }
                            t.header_row = false;
                        }
                    }
                    "table" => {
                        if let Some(t) = b.tables.pop() {
                            if let Some(outer) = b.tables.last_mut() {
                                // A table inside a cell reads as text of that cell.
                                let inner = t
                                    .rows
                                    .iter()
                                    .map(|r| r.join(" "))
                                    .collect::<Vec<_>>()
                                    .join("; ");
                                outer.cell.push(' ');
                                outer.cell.push_str(&inner);
                            } else if !t.header.is_empty() || !t.rows.is_empty() {
                                let at = b.at();
                                b.blocks.push(Block::Table {
                                    header: t.header,
                                    rows: t.rows,
                                    at,
                                });
                            }
                        }
                    }
                    other if BREAKS.contains(&other) && b.tables.is_empty() => b.flush(),
                    _ => {}
                }
            }
            Token::String(text) => {
                if hidden.is_some() {
                    continue;
                }
                let text = String::from_utf8_lossy(&text);
                if in_title {
                    title_text.push_str(&text);
                } else if let Some(t) = b.tables.last_mut() {
                    t.cell.push_str(&text);
                } else {
                    b.text.push_str(&text);
                }
                if b.text.len() > limits.max_text_bytes {
                    return Err(super::over(
                        "its text",
                        b.text.len() as u64,
                        limits.max_text_bytes as u64,
                    ));
                }
            }
            Token::Comment(_) | Token::Doctype(_) | Token::Error(_) => {}
        }
    }
    b.heading = None;
    b.flush();
    Ok(Parsed {
        title,
        fields: Vec::new(),
        blocks: b.blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(html: &str) -> Parsed {
        parse(html, &ParseLimits::default()).unwrap()
    }

    #[test]
    fn headings_text_code_and_tables_come_out_in_order_without_scripts() {
        let doc = parsed(
            "<html><head><title>Travel policy</title><style>p{}</style></head><body>\
             <h1>Travel</h1><p>Book <b>economy</b> class.</p><script>alert('x')</script>\
             <h2>Allowances</h2><table><thead><tr><th>City</th><th>Per day</th></tr></thead>\
             <tbody><tr><td>Paris</td><td>120</td></tr><tr><td>Oslo</td><td>150</td></tr></tbody></table>\
             <pre>line 1\nline 2</pre></body></html>",
        );
        assert_eq!(doc.title.as_deref(), Some("Travel policy"));
        assert!(
            matches!(&doc.blocks[0], Block::Heading { level: 1, text, .. } if text == "Travel")
        );
        assert!(
            matches!(&doc.blocks[1], Block::Text { text, .. } if text == "Book economy class.")
        );
        assert!(matches!(&doc.blocks[2], Block::Heading { level: 2, .. }));
        let Block::Table { header, rows, .. } = &doc.blocks[3] else {
            panic!("{:?}", doc.blocks)
        };
        assert_eq!(header, &["City", "Per day"]);
        assert_eq!(rows.len(), 2);
        assert!(matches!(&doc.blocks[4], Block::Code { text, .. } if text == "line 1\nline 2"));
        assert!(!format!("{doc:?}").contains("alert"));
    }

    #[test]
    fn deep_nesting_is_refused_with_the_limit() {
        let deep = "<div>".repeat(100_000);
        let err = parse(&deep, &ParseLimits::default()).unwrap_err();
        assert!(err.contains("nested more than 256 deep"), "{err}");
    }

    #[test]
    fn broken_markup_still_yields_its_text() {
        let doc = parsed("<p>unclosed <i>italic<p>next</td></tr>");
        let texts: Vec<String> = doc
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["unclosed italic", "next"]);
    }
}
