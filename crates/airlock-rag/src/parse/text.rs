//! Plain text and source code: paragraphs separated by blank lines, each with its lines.

use super::ParseLimits;
use crate::document::{Block, Location, Parsed};

/// Paragraphs of `text`; a paragraph is a run of non-blank lines.
pub(super) fn parse(text: &str, _limits: &ParseLimits) -> Result<Parsed, String> {
    let mut blocks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut first = 0u32;
    let flush = |current: &mut Vec<&str>, first: u32, last: u32, blocks: &mut Vec<Block>| {
        if current.is_empty() {
            return;
        }
        blocks.push(Block::Text {
            text: current.join("\n"),
            at: Location::Lines { first, last },
        });
        current.clear();
    };
    let mut number = 0u32;
    for line in text.lines() {
        number += 1;
        if line.trim().is_empty() {
            flush(&mut current, first, number - 1, &mut blocks);
        } else {
            if current.is_empty() {
                first = number;
            }
            current.push(line.trim_end());
        }
    }
    flush(&mut current, first, number, &mut blocks);
    Ok(Parsed::of(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_keep_their_line_ranges() {
        let parsed = parse("one\ntwo\n\n\nthree\n", &ParseLimits::default()).unwrap();
        assert_eq!(
            parsed.blocks,
            [
                Block::Text {
                    text: "one\ntwo".into(),
                    at: Location::Lines { first: 1, last: 2 }
                },
                Block::Text {
                    text: "three".into(),
                    at: Location::Lines { first: 5, last: 5 }
                },
            ]
        );
    }
}
