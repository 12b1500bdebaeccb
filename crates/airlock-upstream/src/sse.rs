//! Server-sent events from an engine process, split into the `data:` payloads of each event
//! with a ceiling on how much one event may hold.
//!
//! An engine process is trusted to run the model, not to bound its output: a stream that
//! never ends an event cannot grow this buffer past [`MAX_EVENT_BYTES`].

/// Most bytes one event may take; a token's JSON chunk is a few hundred.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// What [`SseDecoder::push`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseError {
    /// An event grew past [`MAX_EVENT_BYTES`] without ending.
    TooLong,
    /// An event's data is not UTF-8.
    NotText,
}

/// Splits a byte stream into events and yields each event's data (its `data:` lines joined
/// with newlines, as the SSE format defines). Comments, `event:` and other fields are
/// skipped; events without data yield nothing.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buffer: Vec<u8>,
    /// Where to resume looking for the end of an event.
    scanned: usize,
}

impl SseDecoder {
    /// Adds `bytes` and appends the data of every event they complete to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) -> Result<(), SseError> {
        self.buffer.extend_from_slice(bytes);
        loop {
            let Some(end) = find_event_end(&self.buffer, self.scanned) else {
                if self.buffer.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLong);
                }
                // The end may straddle this chunk and the next.
                self.scanned = self.buffer.len().saturating_sub(3);
                return Ok(());
            };
            let (event_len, separator) = end;
            let event =
                std::str::from_utf8(&self.buffer[..event_len]).map_err(|_| SseError::NotText)?;
            if let Some(data) = event_data(event) {
                out.push(data);
            }
            self.buffer.drain(..event_len + separator);
            self.scanned = 0;
        }
    }
}

/// The end of the first event at or after `from`: its length and the separator's.
fn find_event_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 1 < buffer.len() {
        match (buffer[i], buffer[i + 1]) {
            (b'\n', b'\n') => return Some((i, 2)),
            (b'\r', b'\n') if buffer[i + 2..].starts_with(b"\r\n") => return Some((i, 4)),
            _ => i += 1,
        }
    }
    None
}

fn event_data(event: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in event.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_in_pieces(bytes: &[u8], piece: usize) -> Result<Vec<String>, SseError> {
        let mut decoder = SseDecoder::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            decoder.push(chunk, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn events_yield_their_data_however_the_bytes_are_cut() {
        let stream = b": ping\n\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\n\r\n\r\ndata: [DONE]\n\n";
        for piece in 1..stream.len() {
            assert_eq!(
                decode_in_pieces(stream, piece).unwrap(),
                ["{\"a\":1}", "one\ntwo", "[DONE]"],
                "cut every {piece} bytes"
            );
        }
    }

    #[test]
    fn an_event_that_never_ends_is_refused_at_the_ceiling() {
        let mut decoder = SseDecoder::default();
        let mut out = Vec::new();
        let line = vec![b'a'; 64 << 10];
        let mut result = Ok(());
        for _ in 0..20 {
            result = decoder.push(&line, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::TooLong));
        assert!(decoder.buffer.len() <= MAX_EVENT_BYTES + line.len());
    }

    #[test]
    fn data_that_is_not_utf8_is_refused() {
        let mut decoder = SseDecoder::default();
        assert_eq!(
            decoder.push(b"data: \xff\xfe\n\n", &mut Vec::new()),
            Err(SseError::NotText)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_decode_the_same_or_fail_the_same(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            piece in 1usize..64,
        ) {
            prop_assert_eq!(decode_in_pieces(&bytes, piece), decode_in_pieces(&bytes, bytes.len().max(1)));
        }
    }
}
