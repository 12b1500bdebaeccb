//! PDF with a text layer. The glyphs' positions are read (not just their text), so that the
//! layout comes back: lines from shared baselines, paragraphs from line spacing, headings
//! from font sizes larger than the page's body text, and tables from runs of lines whose
//! cells, separated by wide gaps, start at the same places.

use pdf_extract::{MediaBox, OutputDev, OutputError, Transform};

use super::{ParseLimits, squeeze};
use crate::document::{Block, Location, Parsed};

/// One glyph: where it starts and ends on its baseline, and its size.
#[derive(Debug, Clone)]
struct Glyph {
    x: f64,
    end: f64,
    y: f64,
    size: f64,
    text: String,
}

/// Collects the glyphs of each page.
struct Collector {
    pages: Vec<Vec<Glyph>>,
    page_height: f64,
    text_bytes: usize,
    max_text_bytes: usize,
}

impl OutputDev for Collector {
    fn begin_page(
        &mut self,
        _page: u32,
        media_box: &MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.pages.push(Vec::new());
        self.page_height = media_box.ury - media_box.lly;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        text: &str,
    ) -> Result<(), OutputError> {
        self.text_bytes += text.len();
        if self.text_bytes > self.max_text_bytes {
            // Reported after the run; further glyphs are not kept.
            return Ok(());
        }
        // The text rendering matrix scales the font; its determinant gives the size drawn.
        let size_x = font_size * (trm.m11 + trm.m21);
        let size_y = font_size * (trm.m12 + trm.m22);
        let size = (size_x * size_y).abs().sqrt();
        let x = trm.m31;
        // Top-down, as a reader goes.
        let y = self.page_height - trm.m32;
        if let Some(page) = self.pages.last_mut() {
            page.push(Glyph {
                x,
                end: x + width * size,
                y,
                size,
                text: text.to_owned(),
            });
        }
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

pub(super) fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<Parsed, String> {
    let doc =
        pdf_extract::Document::load_mem(bytes).map_err(|e| format!("not a readable PDF: {e}"))?;
    if doc.is_encrypted() {
        return Err("the PDF is encrypted".into());
    }
    let pages = doc.get_pages().len();
    if pages > limits.max_pages {
        return Err(format!(
            "{pages} pages, over the limit of {}",
            limits.max_pages
        ));
    }
    let title = doc
        .trailer
        .get(b"Info")
        .and_then(|info| doc.dereference(info))
        .ok()
        .and_then(|(_, info)| info.as_dict().ok())
        .and_then(|info| info.get(b"Title").ok())
        .and_then(|t| t.as_str().ok())
        .map(|t| squeeze(&String::from_utf8_lossy(t)))
        .filter(|t| !t.is_empty());
    let mut collector = Collector {
        pages: Vec::new(),
        page_height: 0.0,
        text_bytes: 0,
        max_text_bytes: limits.max_text_bytes,
    };
    pdf_extract::output_doc(&doc, &mut collector)
        .map_err(|e| format!("its text cannot be read: {e:?}"))?;
    if collector.text_bytes > limits.max_text_bytes {
        return Err(super::over(
            "its text",
            collector.text_bytes as u64,
            limits.max_text_bytes as u64,
        ));
    }
    let mut blocks = Vec::new();
    for (n, glyphs) in collector.pages.into_iter().enumerate() {
        layout(glyphs, n as u32 + 1, &mut blocks);
    }
    Ok(Parsed {
        title,
        fields: Vec::new(),
        blocks,
    })
}

/// A line: its baseline, its size, and its cells (text runs separated by wide gaps).
#[derive(Debug)]
struct Line {
    y: f64,
    size: f64,
    cells: Vec<(f64, String)>,
}

impl Line {
    fn text(&self) -> String {
        squeeze(
            &self
                .cells
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// Groups glyphs into lines and cells.
fn lines(mut glyphs: Vec<Glyph>) -> Vec<Line> {
    glyphs.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x)));
    let mut lines: Vec<Vec<Glyph>> = Vec::new();
    for glyph in glyphs {
        match lines.last_mut() {
            Some(line)
                if line.first().is_some_and(|first| {
                    (first.y - glyph.y).abs() <= first.size.max(glyph.size) * 0.4
                }) =>
            {
                line.push(glyph);
            }
            _ => lines.push(vec![glyph]),
        }
    }
    lines
        .into_iter()
        .map(|mut glyphs| {
            glyphs.sort_by(|a, b| a.x.total_cmp(&b.x));
            let size = glyphs.iter().map(|g| g.size).fold(0.0, f64::max);
            let y = glyphs.first().map_or(0.0, |g| g.y);
            let mut cells: Vec<(f64, String)> = Vec::new();
            let mut last_end = f64::NEG_INFINITY;
            for g in glyphs {
                let gap = g.x - last_end;
                match cells.last_mut() {
                    // A gap wider than about three spaces starts a new cell.
                    Some(cell) if gap < g.size * 1.0 => {
                        if gap > g.size * 0.15 && !cell.1.ends_with(' ') {
                            cell.1.push(' ');
                        }
                        cell.1.push_str(&g.text);
                    }
                    _ => cells.push((g.x, g.text.clone())),
                }
                last_end = last_end.max(g.end);
            }
            Line { y, size, cells }
        })
        .filter(|l| l.cells.iter().any(|(_, t)| !t.trim().is_empty()))
        .collect()
}

/// Whether two lines' cells start at the same places (within a few points).
fn aligned(a: &Line, b: &Line) -> bool {
    a.cells.len() == b.cells.len()
        && a.cells.len() >= 2
        && a.cells
            .iter()
            .zip(&b.cells)
            .all(|((xa, _), (xb, _))| (xa - xb).abs() <= a.size.max(b.size) * 1.5)
}

/// The blocks of one page.
fn layout(glyphs: Vec<Glyph>, page: u32, blocks: &mut Vec<Block>) {
    let lines = lines(glyphs);
    if lines.is_empty() {
        return;
    }
    let mut sizes: Vec<f64> = lines.iter().map(|l| l.size).collect();
    sizes.sort_by(f64::total_cmp);
    let body = sizes[sizes.len() / 2];
    let at = Location::Page { page };
    let mut paragraph: Vec<String> = Vec::new();
    let mut last_y: Option<f64> = None;
    let flush = |paragraph: &mut Vec<String>, blocks: &mut Vec<Block>| {
        let text = squeeze(&paragraph.join(" "));
        paragraph.clear();
        if !text.is_empty() {
            blocks.push(Block::Text {
                text,
                at: at.clone(),
            });
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        // A table: this line and the next ones aligned with it.
        let mut end = i + 1;
        while end < lines.len() && aligned(&lines[i], &lines[end]) {
            end += 1;
        }
        if end - i >= 2 {
            flush(&mut paragraph, blocks);
            let cells = |l: &Line| l.cells.iter().map(|(_, t)| squeeze(t)).collect::<Vec<_>>();
            blocks.push(Block::Table {
                header: cells(&lines[i]),
                rows: lines[i + 1..end].iter().map(cells).collect(),
                at: at.clone(),
            });
            last_y = Some(lines[end - 1].y);
            i = end;
            continue;
        }
        if line.size >= body * 1.2 {
            flush(&mut paragraph, blocks);
            let level = if line.size >= body * 1.6 { 1 } else { 2 };
            blocks.push(Block::Heading {
                level,
                text: line.text(),
                at: at.clone(),
            });
            last_y = Some(line.y);
            i += 1;
            continue;
        }
        // A gap of more than about one and a half lines ends a paragraph.
        if last_y.is_some_and(|y| line.y - y > line.size * 1.8) {
            flush(&mut paragraph, blocks);
        }
        paragraph.push(line.text());
        last_y = Some(line.y);
        i += 1;
    }
    flush(&mut paragraph, blocks);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glyphs(y: f64, size: f64, cells: &[(f64, &str)]) -> Vec<Glyph> {
        let mut out = Vec::new();
        for (x, text) in cells {
            let mut x = *x;
            for c in text.chars() {
                let width = if c == ' ' { 0.28 } else { 0.5 };
                if c != ' ' {
                    out.push(Glyph {
                        x,
                        end: x + width * size,
                        y,
                        size,
                        text: c.to_string(),
                    });
                }
                x += width * size;
            }
        }
        out
    }

    #[test]
    fn layout_finds_headings_paragraphs_and_aligned_tables() {
        let mut page = glyphs(50.0, 20.0, &[(72.0, "Allowances")]);
        page.extend(glyphs(90.0, 10.0, &[(72.0, "Daily rates for travel,")]));
        page.extend(glyphs(102.0, 10.0, &[(72.0, "by city.")]));
        page.extend(glyphs(130.0, 10.0, &[(72.0, "City"), (200.0, "Rate")]));
        page.extend(glyphs(142.0, 10.0, &[(72.0, "Paris"), (200.0, "120")]));
        page.extend(glyphs(154.0, 10.0, &[(72.0, "Oslo"), (200.0, "150")]));
        let mut blocks = Vec::new();
        layout(page, 3, &mut blocks);
        assert!(
            matches!(&blocks[0], Block::Heading { level: 1, text, at: Location::Page { page: 3 } } if text == "Allowances"),
            "{blocks:?}"
        );
        assert!(
            matches!(&blocks[1], Block::Text { text, .. } if text == "Daily rates for travel, by city."),
            "{blocks:?}"
        );
        let Block::Table { header, rows, .. } = &blocks[2] else {
            panic!("{blocks:?}")
        };
        assert_eq!(header, &["City", "Rate"]);
        assert_eq!(rows, &[vec!["Paris", "120"], vec!["Oslo", "150"]]);
    }

    #[test]
    fn bytes_that_are_not_a_pdf_are_refused() {
        let err = parse(b"%PDF-1.4 garbage", &ParseLimits::default()).unwrap_err();
        assert!(err.contains("not a readable PDF"), "{err}");
    }
}
