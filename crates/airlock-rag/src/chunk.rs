//! Chunks sized in the embedding model's tokens, cut along the document's structure: a chunk
//! never spans two sections, keeps the heading path it sits under, and a table's chunks each
//! repeat its header row.

use crate::document::{Block, Location, Parsed};

/// A piece of a document, ready to embed and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The headings it sits under, outermost first.
    pub heading: Vec<String>,
    /// Its text.
    pub text: String,
    /// Where it stands in the document.
    pub location: Location,
    /// Its length in the embedding model's tokens (heading line included).
    pub tokens: usize,
}

impl Chunk {
    /// The heading path as one line (`A > B > C`).
    pub fn heading_line(&self) -> String {
        self.heading.join(" > ")
    }

    /// What is embedded and searched: the heading path, then the text.
    pub fn embedding_text(&self) -> String {
        if self.heading.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{}", self.heading_line(), self.text)
        }
    }
}

/// Cuts `parsed` into chunks of at most `max_tokens` tokens as `count` counts them (a piece
/// too long for any chunk is cut at sentences, then at words).
pub fn chunks(parsed: &Parsed, max_tokens: usize, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut path: Vec<(u8, String)> = Vec::new();
    if let Some(title) = &parsed.title
        && !parsed
            .blocks
            .iter()
            .any(|b| matches!(b, Block::Heading { level: 1, .. }))
    {
        path.push((0, title.clone()));
    }
    let mut current: Option<Open> = None;
    for block in &parsed.blocks {
        match block {
            Block::Heading { level, text, .. } => {
                flush(&mut current, &mut out);
                path.retain(|(l, _)| *l < *level);
                path.push((*level, text.clone()));
            }
            Block::Text { text, at } | Block::Code { text, at } => {
                let heading: Vec<String> = path.iter().map(|(_, t)| t.clone()).collect();
                let budget = budget(max_tokens, &heading, count);
                for piece in pieces(text, budget, count) {
                    let tokens = count(&piece);
                    let fits = current
                        .as_ref()
                        .is_some_and(|c| c.tokens + tokens <= budget);
                    if !fits {
                        flush(&mut current, &mut out);
                        current = Some(Open {
                            heading: heading.clone(),
                            text: Vec::new(),
                            location: at.clone(),
                            tokens: 0,
                        });
                    }
                    if let Some(c) = current.as_mut() {
                        c.text.push(piece);
                        c.tokens += tokens;
                        c.location = c.location.merge(at);
                    }
                }
            }
            Block::Table { header, rows, at } => {
                flush(&mut current, &mut out);
                let heading: Vec<String> = path.iter().map(|(_, t)| t.clone()).collect();
                let budget = budget(max_tokens, &heading, count);
                table(header, rows, at, &heading, budget, count, &mut out);
            }
        }
    }
    flush(&mut current, &mut out);
    // The heading line is part of what is embedded: count it in.
    for chunk in &mut out {
        if !chunk.heading.is_empty() {
            chunk.tokens += count(&chunk.heading_line());
        }
    }
    out
}

/// A chunk being filled.
struct Open {
    heading: Vec<String>,
    text: Vec<String>,
    location: Location,
    tokens: usize,
}

fn flush(current: &mut Option<Open>, out: &mut Vec<Chunk>) {
    if let Some(open) = current.take()
        && !open.text.is_empty()
    {
        out.push(Chunk {
            heading: open.heading,
            text: open.text.join("\n"),
            location: open.location,
            tokens: open.tokens,
        });
    }
}

/// Tokens left for text once the heading line is counted (at least a quarter of the whole).
fn budget(max_tokens: usize, heading: &[String], count: &dyn Fn(&str) -> usize) -> usize {
    let used = if heading.is_empty() {
        0
    } else {
        count(&heading.join(" > "))
    };
    max_tokens.saturating_sub(used).max(max_tokens / 4).max(1)
}

/// `text` cut into pieces of at most `budget` tokens: whole if it fits, else at sentence
/// ends, else at words.
fn pieces(text: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    if count(text) <= budget {
        return vec![text.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0;
    for sentence in sentences(text) {
        let tokens = count(sentence);
        if tokens > budget {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                current_tokens = 0;
            }
            out.extend(words(sentence, budget, count));
            continue;
        }
        if current_tokens + tokens > budget && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(sentence);
        current_tokens += tokens;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Sentences: cut after `.`, `!`, `?` followed by whitespace, and at line ends.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let end_of_sentence = matches!(b, b'.' | b'!' | b'?')
            && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace());
        if end_of_sentence || b == b'\n' {
            let piece = text[start..=i].trim();
            if !piece.is_empty() {
                out.push(piece);
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Words of `text` in runs of at most `budget` tokens.
fn words(text: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let candidate = if current.is_empty() {
            word.to_owned()
        } else {
            format!("{current} {word}")
        };
        if count(&candidate) > budget && !current.is_empty() {
            out.push(std::mem::replace(&mut current, word.to_owned()));
        } else {
            current = candidate;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn row_line(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// A table's chunks: its header row, then as many rows as fit, again and again.
fn table(
    header: &[String],
    rows: &[Vec<String>],
    at: &Location,
    heading: &[String],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<Chunk>,
) {
    let header_line = (!header.is_empty()).then(|| row_line(header));
    let header_tokens = header_line.as_deref().map_or(0, count);
    let mut lines: Vec<String> = Vec::new();
    let mut tokens = header_tokens;
    let emit = |lines: &mut Vec<String>, tokens: usize, out: &mut Vec<Chunk>| {
        if lines.is_empty() {
            return;
        }
        let mut text: Vec<String> = header_line.iter().cloned().collect();
        text.append(lines);
        out.push(Chunk {
            heading: heading.to_vec(),
            text: text.join("\n"),
            location: at.clone(),
            tokens,
        });
    };
    for row in rows {
        let line = row_line(row);
        let line_tokens = count(&line);
        if tokens + line_tokens > budget && !lines.is_empty() {
            emit(&mut lines, tokens, out);
            tokens = header_tokens;
        }
        if header_tokens + line_tokens > budget {
            // A row too long even alone: its words, each run under the header.
            for piece in words(&line, budget.saturating_sub(header_tokens).max(1), count) {
                let piece_tokens = count(&piece);
                emit(&mut vec![piece], header_tokens + piece_tokens, out);
            }
            continue;
        }
        lines.push(line);
        tokens += line_tokens;
    }
    if rows.is_empty() && header_line.is_some() {
        out.push(Chunk {
            heading: heading.to_vec(),
            text: header_line.clone().unwrap_or_default(),
            location: at.clone(),
            tokens: header_tokens,
        });
    }
    emit(&mut lines, tokens, out);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One token per word, as a stand-in tokenizer.
    fn words_count(text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn lines(first: u32, last: u32) -> Location {
        Location::Lines { first, last }
    }

    #[test]
    fn sections_never_share_a_chunk_and_keep_their_heading_path() {
        let parsed = Parsed::of(vec![
            Block::Heading {
                level: 1,
                text: "Handbook".into(),
                at: lines(1, 1),
            },
            Block::Text {
                text: "Welcome aboard.".into(),
                at: lines(3, 3),
            },
            Block::Heading {
                level: 2,
                text: "Leave".into(),
                at: lines(5, 5),
            },
            Block::Text {
                text: "Annual leave is 25 days.".into(),
                at: lines(7, 7),
            },
            Block::Text {
                text: "Ask your manager.".into(),
                at: lines(8, 9),
            },
            Block::Heading {
                level: 2,
                text: "Travel".into(),
                at: lines(11, 11),
            },
            Block::Text {
                text: "Economy class only.".into(),
                at: lines(13, 13),
            },
        ]);
        let chunks = chunks(&parsed, 50, &words_count);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].heading, ["Handbook", "Leave"]);
        assert_eq!(
            chunks[1].text,
            "Annual leave is 25 days.\nAsk your manager."
        );
        assert_eq!(chunks[1].location, lines(7, 9));
        assert_eq!(chunks[2].heading, ["Handbook", "Travel"]);
        assert_eq!(
            chunks[2].embedding_text(),
            "Handbook > Travel\nEconomy class only."
        );
    }

    #[test]
    fn every_table_chunk_repeats_the_header_row() {
        let rows: Vec<Vec<String>> = (0..30)
            .map(|i| vec![format!("city{i}"), format!("{}", 100 + i)])
            .collect();
        let parsed = Parsed::of(vec![Block::Table {
            header: vec!["City".into(), "Rate".into()],
            rows,
            at: Location::Page { page: 2 },
        }]);
        let chunks = chunks(&parsed, 40, &words_count);
        assert!(chunks.len() > 2, "{chunks:?}");
        for chunk in &chunks {
            assert!(
                chunk.text.starts_with("| City | Rate |\n"),
                "{}",
                chunk.text
            );
            assert!(chunk.tokens <= 40);
            assert_eq!(chunk.location, Location::Page { page: 2 });
        }
        let all: String = chunks.iter().map(|c| c.text.clone()).collect();
        for i in 0..30 {
            assert!(all.contains(&format!("| city{i} | {} |", 100 + i)));
        }
    }

    proptest! {
        #[test]
        fn no_chunk_is_over_budget_and_no_word_is_lost(
            paragraphs in proptest::collection::vec("[a-z]{1,8}( [a-z]{1,8}){0,60}\\.?", 1..20),
            budget in 8usize..64,
        ) {
            let blocks = paragraphs
                .iter()
                .enumerate()
                .map(|(i, t)| Block::Text { text: t.clone(), at: lines(i as u32 + 1, i as u32 + 1) })
                .collect();
            let parsed = Parsed::of(blocks);
            let chunks = chunks(&parsed, budget, &words_count);
            for chunk in &chunks {
                prop_assert!(chunk.tokens <= budget, "{} > {budget}: {}", chunk.tokens, chunk.text);
            }
            let words_in: usize = paragraphs.iter().map(|p| words_count(p)).sum();
            let words_out: usize = chunks.iter().map(|c| words_count(&c.text)).sum();
            prop_assert_eq!(words_in, words_out);
        }
    }
}
