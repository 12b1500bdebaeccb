//! From token bytes to text a caller may see.
//!
//! Tokens are byte strings: one character may be split across two tokens, and a stop sequence
//! may be split across many. [`TextStream`] releases text only when it is complete UTF-8 and
//! cannot be the beginning of a stop sequence, so a streamed answer never shows half a
//! character or the first half of a stop sequence it then cuts off.

/// What one push released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Text that is safe to show (possibly empty).
    Text(String),
    /// A stop sequence matched: the text before it, and generation ends.
    Stopped {
        /// Text before the stop sequence.
        text: String,
        /// The stop sequence that matched.
        stop: String,
    },
}

/// Turns a stream of token bytes into visible text, watching for stop sequences.
#[derive(Debug, Clone)]
pub struct TextStream {
    stops: Vec<String>,
    undecoded: Vec<u8>,
    held: String,
}

impl TextStream {
    /// A stream that ends at the first of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            undecoded: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Release {
        self.undecoded.extend_from_slice(bytes);
        self.decode();
        if let Some((at, stop)) = self.first_stop() {
            let text = self.held[..at].to_owned();
            let stop = self.stops[stop].clone();
            self.held.clear();
            self.undecoded.clear();
            return Release::Stopped { text, stop };
        }
        let keep = self.longest_stop_prefix_suffix();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Release::Text(text)
    }

    /// Everything still held back, at the end of generation. Bytes that never completed a
    /// character become U+FFFD.
    pub fn finish(&mut self) -> String {
        if !self.undecoded.is_empty() {
            self.held.push_str(&String::from_utf8_lossy(&std::mem::take(
                &mut self.undecoded,
            )));
        }
        std::mem::take(&mut self.held)
    }

    /// Moves the longest decodable prefix of `undecoded` into `held`, replacing bytes that
    /// can never start a character with U+FFFD and leaving an incomplete tail in place.
    fn decode(&mut self) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.undecoded[start..]) {
                Ok(s) => {
                    self.held.push_str(s);
                    start = self.undecoded.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The prefix is valid by the error's own account.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.undecoded[start..valid]));
                    match e.error_len() {
                        Some(n) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start = valid + n;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.undecoded.drain(..start);
    }

    /// Where the earliest stop sequence begins in `held`, and which one it is.
    fn first_stop(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(n, s)| self.held.find(s.as_str()).map(|at| (at, n)))
            .min()
    }

    /// Length of the longest suffix of `held` that some stop sequence starts with.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for len in (best + 1..=max).rev() {
                let from = self.held.len() - len;
                if self.held.is_char_boundary(from) && stop.starts_with(&self.held[from..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(chunks: &[&[u8]], stops: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut stream = TextStream::new(&stops);
        let mut out = String::new();
        for chunk in chunks {
            match stream.push(chunk) {
                Release::Text(t) => out.push_str(&t),
                Release::Stopped { text, .. } => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&stream.finish());
        (out, false)
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_is_found_and_never_shown() {
        let stops = vec!["###".to_owned()];
        let mut stream = TextStream::new(&stops);
        assert_eq!(stream.push(b"Paris#"), Release::Text("Paris".into()));
        assert_eq!(stream.push(b"#"), Release::Text(String::new()));
        assert_eq!(
            stream.push(b"# more"),
            Release::Stopped {
                text: String::new(),
                stop: "###".into()
            }
        );
    }

    #[test]
    fn the_earliest_stop_sequence_in_the_text_is_the_one_reported() {
        let stops = vec!["END".to_owned(), "\n".to_owned()];
        let mut stream = TextStream::new(&stops);
        assert_eq!(
            stream.push(b"a\nb END"),
            Release::Stopped {
                text: "a".into(),
                stop: "\n".into()
            }
        );
    }

    #[test]
    fn a_false_start_is_released_when_it_stops_matching() {
        let stops = vec!["###".to_owned()];
        let mut stream = TextStream::new(&stops);
        assert_eq!(stream.push(b"a##"), Release::Text("a".into()));
        assert_eq!(stream.push(b"b"), Release::Text("##b".into()));
    }

    #[test]
    fn a_character_split_across_tokens_is_released_whole() {
        let euro = "€".as_bytes();
        let mut stream = TextStream::new(&[]);
        assert_eq!(stream.push(&euro[..1]), Release::Text(String::new()));
        assert_eq!(stream.push(&euro[1..]), Release::Text("€".into()));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(run(&[b"a\xffb"], &[]).0, "a\u{FFFD}b");
        assert_eq!(run(&[b"a\xe2\x82"], &[]).0, "a\u{FFFD}");
    }

    proptest! {
        /// However the bytes are split into tokens, the visible text is the text up to the
        /// first stop sequence.
        #[test]
        fn output_is_the_text_before_the_first_stop(
            text in "[ab€#\n]{0,40}",
            stops in proptest::collection::vec("[ab€#]{1,4}", 0..3),
            cuts in proptest::collection::vec(0usize..64, 0..12),
        ) {
            // A stop inside another stop makes the answer depend on token boundaries (the
            // shorter one is seen first); real stop lists are not like that.
            prop_assume!(stops.iter().enumerate().all(|(i, a)| stops
                .iter()
                .enumerate()
                .all(|(j, b)| i == j || !b.contains(a.as_str()))));
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let first = stops.iter().filter_map(|s| text.find(s.as_str())).min();
            let (out, stopped) = run(&chunks, &stop_refs);
            match first {
                Some(at) => {
                    prop_assert!(stopped);
                    prop_assert_eq!(out, &text[..at]);
                }
                None => {
                    prop_assert!(!stopped);
                    prop_assert_eq!(out, text);
                }
            }
        }
    }
}
