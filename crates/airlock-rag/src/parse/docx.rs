//! Word documents (Office Open XML): headings by paragraph style, paragraphs, and tables
//! with their first row as the header. The container is opened with limits on its entries
//! and on what its document part unpacks to, so a zip bomb is refused, not unpacked.

use std::io::{Cursor, Read};

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{ParseLimits, squeeze};
use crate::document::{Block, Location, Parsed};

/// The part holding the text.
const DOCUMENT: &str = "word/document.xml";

pub(super) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<Parsed, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a DOCX (zip) container: {e}"))?;
    if archive.len() > limits.max_entries {
        return Err(format!(
            "the container has {} entries, over the limit of {}",
            archive.len(),
            limits.max_entries
        ));
    }
    let xml = {
        let part = archive
            .by_name(DOCUMENT)
            .map_err(|_| format!("not a Word document: no {DOCUMENT}"))?;
        let mut xml = Vec::new();
        part.take(limits.max_unpacked_bytes + 1)
            .read_to_end(&mut xml)
            .map_err(|e| format!("{DOCUMENT} cannot be unpacked: {e}"))?;
        if xml.len() as u64 > limits.max_unpacked_bytes {
            return Err(format!(
                "{DOCUMENT} unpacks to more than the {} limit (a compression bomb?)",
                super::human_bytes(limits.max_unpacked_bytes)
            ));
        }
        xml
    };
    let title = read_title(&mut archive, limits);
    let mut parsed = document(&xml, limits)?;
    parsed.title = title;
    Ok(parsed)
}

/// `dc:title` of `docProps/core.xml`, if there is one.
fn read_title(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    limits: &ParseLimits,
) -> Option<String> {
    let part = archive.by_name("docProps/core.xml").ok()?;
    let mut xml = Vec::new();
    part.take(limits.max_unpacked_bytes.min(1 << 20))
        .read_to_end(&mut xml)
        .ok()?;
    let mut reader = Reader::from_reader(xml.as_slice());
    let mut in_title = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(e) if e.local_name().as_ref() == "title" => in_title = true,
            Event::Text(t) if in_title => {
                let text = squeeze(&t.xml10_content());
                return (!text.is_empty()).then_some(text);
            }
            Event::Eof => return None,
            _ => {}
        }
        buf.clear();
    }
}

/// A table being read: its rows, the row and the cell being read.
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
}

fn document(xml: &[u8], limits: &ParseLimits) -> Result<Parsed, String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut paragraph = String::new();
    let mut style: Option<u8> = None;
    let mut in_text = false;
    let mut tables: Vec<Table> = Vec::new();
    let mut text_bytes = 0usize;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("{DOCUMENT} is not well-formed XML: {e}"))?;
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth > limits.max_nesting {
                    return Err(format!(
                        "elements are nested more than {} deep",
                        limits.max_nesting
                    ));
                }
                match e.local_name().as_ref() {
                    "p" => {
                        paragraph.clear();
                        style = None;
                    }
                    "t" => in_text = true,
                    "tbl" => tables.push(Table::default()),
                    "tr" => {
                        if let Some(t) = tables.last_mut() {
                            t.row.clear();
                        }
                    }
                    "tc" => {
                        if let Some(t) = tables.last_mut() {
                            t.cell.clear();
                        }
                    }
                    _ => {}
                }
            }
            Event::Empty(e) => match e.local_name().as_ref() {
                "pStyle" => {
                    style = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == "val")
                        .and_then(|a| heading_level(&a.value));
                }
                "tab" => paragraph.push('\t'),
                "br" => paragraph.push(' '),
                _ => {}
            },
            Event::Text(t) if in_text => {
                let text = t.xml10_content();
                text_bytes += text.len();
                if text_bytes > limits.max_text_bytes {
                    return Err(super::over(
                        "its text",
                        text_bytes as u64,
                        limits.max_text_bytes as u64,
                    ));
                }
                paragraph.push_str(&text);
            }
            // `&amp;` and kin arrive as events of their own.
            Event::GeneralRef(r) if in_text => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    _ => match &*r {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => None,
                    },
                };
                if let Some(c) = resolved {
                    paragraph.push(c);
                }
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    "t" => in_text = false,
                    "p" => {
                        let text = squeeze(&paragraph);
                        paragraph.clear();
                        if text.is_empty() {
                            continue;
                        }
                        if let Some(t) = tables.last_mut() {
                            if !t.cell.is_empty() {
                                t.cell.push(' ');
                            }
                            t.cell.push_str(&text);
                            continue;
                        }
                        let at = Location::Block {
                            index: blocks.len() as u32 + 1,
                        };
                        blocks.push(match style {
                            Some(level) => Block::Heading { level, text, at },
                            None => Block::Text { text, at },
                        });
                    }
                    "tc" => {
                        if let Some(t) = tables.last_mut() {
                            let cell = std::mem::take(&mut t.cell);
                            t.row.push(cell);
                        }
                    }
                    "tr" => {
                        if let Some(t) = tables.last_mut() {
                            let row = std::mem::take(&mut t.row);
                            t.rows.push(row);
                        }
                    }
                    "tbl" => {
                        let Some(mut table) = tables.pop() else {
                            continue;
                        };
                        if let Some(outer) = tables.last_mut() {
                            let inner: Vec<String> =
                                table.rows.iter().map(|r| r.join(" ")).collect();
                            outer.cell.push_str(&inner.join("; "));
                        } else if !table.rows.is_empty() {
                            let header = table.rows.remove(0);
                            let at = Location::Block {
                                index: blocks.len() as u32 + 1,
                            };
                            blocks.push(Block::Table {
                                header,
                                rows: table.rows,
                                at,
                            });
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(Parsed::of(blocks))
}

/// The heading level a paragraph style names (`Heading1`…`Heading9`, `Title`).
fn heading_level(style: &str) -> Option<u8> {
    if style.eq_ignore_ascii_case("title") {
        return Some(1);
    }
    let digits = style
        .strip_prefix("Heading")
        .or_else(|| style.strip_prefix("heading"))?;
    digits
        .parse::<u8>()
        .ok()
        .filter(|l| (1..=9).contains(l))
        .map(|l| l.min(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heading_styles_give_levels() {
        assert_eq!(heading_level("Heading2"), Some(2));
        assert_eq!(heading_level("Title"), Some(1));
        assert_eq!(heading_level("Heading9"), Some(6));
        assert_eq!(heading_level("Normal"), None);
        assert_eq!(heading_level("Heading0"), None);
    }

    #[test]
    fn paragraphs_headings_and_tables_come_from_the_document_part() {
        let xml = br#"<w:document xmlns:w="x"><w:body>
            <w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Expenses</w:t></w:r></w:p>
            <w:p><w:r><w:t xml:space="preserve">Claims within </w:t></w:r><w:r><w:t>30 days.</w:t></w:r></w:p>
            <w:tbl><w:tr><w:tc><w:p><w:r><w:t>Item</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Limit</w:t></w:r></w:p></w:tc></w:tr>
            <w:tr><w:tc><w:p><w:r><w:t>Hotel</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>200</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
            </w:body></w:document>"#;
        let doc = document(xml, &ParseLimits::default()).unwrap();
        assert!(
            matches!(&doc.blocks[0], Block::Heading { level: 1, text, .. } if text == "Expenses")
        );
        assert!(
            matches!(&doc.blocks[1], Block::Text { text, .. } if text == "Claims within 30 days.")
        );
        let Block::Table { header, rows, .. } = &doc.blocks[2] else {
            panic!("{:?}", doc.blocks)
        };
        assert_eq!(header, &["Item", "Limit"]);
        assert_eq!(rows, &[vec!["Hotel", "200"]]);
    }
}
