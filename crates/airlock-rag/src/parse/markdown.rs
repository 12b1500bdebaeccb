//! Markdown (CommonMark with GitHub tables): headings, paragraphs and list items, code
//! blocks, and tables with their header, each with the lines it spans.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use super::ParseLimits;
use crate::document::{Block, Location, Parsed};

/// What is being collected.
enum Open {
    Heading(u8),
    Text,
    Code,
}

/// A table being read: its header, its rows, the row and cell being read, its span.
#[derive(Default)]
struct TableState {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
    start: usize,
    end: usize,
}

pub(super) fn parse(source: &str, limits: &ParseLimits) -> Result<Parsed, String> {
    // Byte offset of each line start, to turn spans into line numbers.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |offset: usize| starts.partition_point(|&s| s <= offset) as u32;
    let mut blocks = Vec::new();
    let mut title = None;
    let mut depth = 0usize;
    let mut open: Option<(Open, String, usize, usize)> = None;
    let mut table: Option<TableState> = None;
    for (event, span) in Parser::new_ext(source, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                depth += 1;
                if depth > limits.max_nesting {
                    return Err(format!(
                        "elements are nested more than {} deep",
                        limits.max_nesting
                    ));
                }
                match tag {
                    Tag::Heading { level, .. } => {
                        open = Some((
                            Open::Heading(level as u8),
                            String::new(),
                            span.start,
                            span.end,
                        ));
                    }
                    Tag::Paragraph if table.is_none() && open.is_none() => {
                        open = Some((Open::Text, String::new(), span.start, span.end));
                    }
                    Tag::CodeBlock(_) => {
                        open = Some((Open::Code, String::new(), span.start, span.end));
                    }
                    Tag::Table(_) => {
                        table = Some(TableState {
                            start: span.start,
                            end: span.end,
                            ..TableState::default()
                        });
                    }
                    Tag::TableCell => {
                        if let Some(t) = table.as_mut() {
                            t.cell.clear();
                        }
                    }
                    _ => {}
                }
            }
            Event::End(tag) => {
                depth = depth.saturating_sub(1);
                match tag {
                    TagEnd::Heading(_) | TagEnd::Paragraph | TagEnd::CodeBlock => {
                        let Some((kind, text, start, end)) = open.take() else {
                            continue;
                        };
                        let at = Location::Lines {
                            first: line_of(start),
                            last: line_of(end.saturating_sub(1).max(start)),
                        };
                        let text = match kind {
                            Open::Code => text.trim_end().to_owned(),
                            _ => text.trim().to_owned(),
                        };
                        if text.is_empty() {
                            continue;
                        }
                        blocks.push(match kind {
                            Open::Heading(level) => {
                                if level == 1 && title.is_none() {
                                    title = Some(text.clone());
                                }
                                Block::Heading { level, text, at }
                            }
                            Open::Text => Block::Text { text, at },
                            Open::Code => Block::Code { text, at },
                        });
                    }
                    TagEnd::TableCell => {
                        if let Some(t) = table.as_mut() {
                            let cell = super::squeeze(&t.cell);
                            t.row.push(cell);
                        }
                    }
                    TagEnd::TableHead => {
                        if let Some(t) = table.as_mut() {
                            t.header = std::mem::take(&mut t.row);
                        }
                    }
                    TagEnd::TableRow => {
                        if let Some(t) = table.as_mut() {
                            let row = std::mem::take(&mut t.row);
                            t.rows.push(row);
                        }
                    }
                    TagEnd::Table => {
                        if let Some(t) = table.take() {
                            blocks.push(Block::Table {
                                header: t.header,
                                rows: t.rows,
                                at: Location::Lines {
                                    first: line_of(t.start),
                                    last: line_of(t.end.saturating_sub(1).max(t.start)),
                                },
                            });
                        }
                    }
                    TagEnd::Item => {
                        // A list item's text ends with it.
                        if let Some((Open::Text, text, start, end)) = open.take() {
                            let text = text.trim().to_owned();
                            if !text.is_empty() {
                                blocks.push(Block::Text {
                                    text,
                                    at: Location::Lines {
                                        first: line_of(start),
                                        last: line_of(end.saturating_sub(1).max(start)),
                                    },
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(text) | Event::Code(text) => {
                if let Some(t) = table.as_mut() {
                    t.cell.push_str(&text);
                } else if let Some((_, buffer, _, end)) = open.as_mut() {
                    buffer.push_str(&text);
                    *end = (*end).max(span.end);
                } else {
                    // Text of a tight list item arrives outside a paragraph.
                    open = Some((Open::Text, text.to_string(), span.start, span.end));
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some((_, buffer, _, _)) = open.as_mut() {
                    buffer.push(' ');
                }
            }
            _ => {}
        }
    }
    Ok(Parsed {
        title,
        fields: Vec::new(),
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Parsed {
        parse(text, &ParseLimits::default()).unwrap()
    }

    #[test]
    fn headings_paragraphs_code_and_tables_keep_their_lines() {
        let doc = parsed(
            "# Handbook\n\nIntro text\non two lines.\n\n## Leave\n\n| Kind | Days |\n|---|---|\n| Annual | 25 |\n| Sick | 10 |\n\n```\ncode here\n```\n",
        );
        assert_eq!(doc.title.as_deref(), Some("Handbook"));
        assert_eq!(
            doc.blocks[1],
            Block::Text {
                text: "Intro text on two lines.".into(),
                at: Location::Lines { first: 3, last: 4 }
            }
        );
        assert!(matches!(&doc.blocks[2], Block::Heading { level: 2, text, .. } if text == "Leave"));
        let Block::Table { header, rows, at } = &doc.blocks[3] else {
            panic!("a table: {:?}", doc.blocks)
        };
        assert_eq!(header, &["Kind", "Days"]);
        assert_eq!(rows, &[vec!["Annual", "25"], vec!["Sick", "10"]]);
        assert_eq!(at, &Location::Lines { first: 8, last: 11 });
        assert!(matches!(&doc.blocks[4], Block::Code { text, .. } if text == "code here"));
    }

    #[test]
    fn list_items_become_text_blocks() {
        let doc = parsed("- first item\n- second item\n");
        let texts: Vec<&str> = doc
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["first item", "second item"]);
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let deep = format!("{}x", "> ".repeat(300));
        assert!(parse(&deep, &ParseLimits::default()).is_err());
    }
}
