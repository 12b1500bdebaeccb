//! Validation of GGUF files (v2 and v3): header, metadata, tensor table and data layout.
//!
//! Reads the header and metadata as a stream, checking every count and length against
//! [`Limits`] before it is used, skips values it does not need without buffering them, and
//! checks by arithmetic that each tensor lies inside the file, is aligned, and overlaps no
//! other. Tensor data is never read.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

use crate::{Error, Limits, Result};

/// What a GGUF file says about its model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GgufInfo {
    /// Format version (2 or 3).
    pub version: u32,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub model_name: Option<String>,
    /// `<arch>.context_length`.
    pub context_length: Option<u64>,
    /// Quantisation label from `general.file_type`, else the dominant tensor type.
    pub quantization: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Number of tensors.
    pub tensors: u64,
    /// Total number of weights.
    pub parameters: u64,
    /// Every integer metadata value, by key (hyperparameters such as head counts).
    pub integers: BTreeMap<String, u64>,
    /// The element count of every array metadata value, by key.
    pub array_lengths: BTreeMap<String, u64>,
    /// Every tensor's shape, by name.
    pub tensor_shapes: BTreeMap<String, Vec<u64>>,
}

/// Block size (elements) and block bytes of each ggml tensor type, by type id.
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// llama.cpp's `general.file_type` labels.
fn file_type_label(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

const MAX_ARRAY_NESTING: u32 = 4;
const MAX_DIMS: u32 = 4;

struct Reader<'a, R> {
    inner: &'a mut R,
    pos: u64,
    name: &'a str,
    limits: &'a Limits,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.name.to_owned(),
            reason: reason.into(),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| self.eof(e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn eof(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.bad(format!("file ends inside the header at byte {}", self.pos))
        } else {
            Error::io(self.name, e)
        }
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = io::copy(&mut self.inner.take(n), &mut io::sink())
            .map_err(|e| Error::io(self.name, e))?;
        self.pos += copied;
        if copied != n {
            return Err(self.bad(format!("file ends inside the header at byte {}", self.pos)));
        }
        Ok(())
    }

    fn string_len(&mut self, what: &str) -> Result<u64> {
        let len = self.u64()?;
        if len > self.limits.max_gguf_string {
            return Err(self.bad(format!(
                "{what}: string length {len} exceeds the limit of {}",
                self.limits.max_gguf_string
            )));
        }
        Ok(len)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.string_len(what)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|e| self.eof(e))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| self.bad(format!("{what}: string is not UTF-8")))
    }

    /// Reads a value of `ty`, returning it if it is a string or integer, skipping otherwise.
    fn value(&mut self, key: &str, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 | 1 | 7 => Value::Int(u64::from(self.bytes::<1>()?[0])),
            2 | 3 => Value::Int(u64::from(u16::from_le_bytes(self.bytes()?))),
            4 | 5 => Value::Int(u64::from(self.u32()?)),
            6 => {
                self.skip(4)?;
                Value::Other
            }
            10 | 11 => Value::Int(self.u64()?),
            12 => {
                self.skip(8)?;
                Value::Other
            }
            8 => {
                let len = self.string_len(key)?;
                if WANTED_STRINGS.contains(&key) || key.ends_with(".architecture") {
                    let mut buf = vec![0u8; len as usize];
                    self.inner.read_exact(&mut buf).map_err(|e| self.eof(e))?;
                    self.pos += len;
                    Value::Str(
                        String::from_utf8(buf)
                            .map_err(|_| self.bad(format!("{key}: value is not UTF-8")))?,
                    )
                } else {
                    self.skip(len)?;
                    Value::Other
                }
            }
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.bad(format!(
                        "{key}: arrays nested deeper than {MAX_ARRAY_NESTING}"
                    )));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if count > self.limits.max_gguf_array {
                    return Err(self.bad(format!(
                        "{key}: array length {count} exceeds the limit of {}",
                        self.limits.max_gguf_array
                    )));
                }
                match fixed_size(elem) {
                    Some(size) => self.skip(count * size)?,
                    None => {
                        for _ in 0..count {
                            self.value(key, elem, depth + 1)?;
                        }
                    }
                }
                Value::Array(count)
            }
            other => return Err(self.bad(format!("{key}: unknown metadata value type {other}"))),
        })
    }
}

const WANTED_STRINGS: [&str; 3] = [
    "general.architecture",
    "general.name",
    "tokenizer.chat_template",
];

enum Value {
    Int(u64),
    Str(String),
    Array(u64),
    Other,
}

fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Validates the GGUF file read by `reader`, of total length `len`.
pub fn validate(name: &str, reader: &mut impl Read, len: u64, limits: &Limits) -> Result<GgufInfo> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        name,
        limits,
    };
    if r.bytes::<4>()? != *b"GGUF" {
        return Err(r.bad("no GGUF magic"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(r.bad(format!(
            "version {version} is not supported (2 or 3; big-endian files are refused)"
        )));
    }
    let tensor_count = r.u64()?;
    if tensor_count > limits.max_tensors {
        return Err(r.bad(format!(
            "tensor count {tensor_count} exceeds the limit of {}",
            limits.max_tensors
        )));
    }
    let kv_count = r.u64()?;
    if kv_count > limits.max_gguf_kv {
        return Err(r.bad(format!(
            "metadata count {kv_count} exceeds the limit of {}",
            limits.max_gguf_kv
        )));
    }
    let mut info = GgufInfo {
        version,
        tensors: tensor_count,
        ..GgufInfo::default()
    };
    let mut alignment = 32u64;
    let mut file_type = None;
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = r.string("metadata key")?;
        if !keys.insert(key.clone()) {
            return Err(r.bad(format!("metadata key {key:?} appears twice")));
        }
        let ty = r.u32()?;
        match (r.value(&key, ty, 0)?, key.as_str()) {
            (Value::Str(s), "general.architecture") => info.architecture = Some(s),
            (Value::Str(s), "general.name") => info.model_name = Some(s),
            (Value::Str(s), "tokenizer.chat_template") => info.chat_template = Some(s),
            (Value::Int(v), "general.alignment") => {
                if v == 0 || !v.is_power_of_two() || v > 1 << 20 {
                    return Err(r.bad(format!(
                        "general.alignment {v} is not a power of two up to 1 MiB"
                    )));
                }
                alignment = v;
            }
            (Value::Int(v), "general.file_type") => file_type = Some(v),
            (Value::Int(v), _) => {
                info.integers.insert(key, v);
            }
            (Value::Array(count), _) => {
                info.array_lengths.insert(key, count);
            }
            _ => {}
        }
    }
    if let Some(arch) = &info.architecture {
        let wanted = format!("{arch}.context_length");
        info.context_length = info.integers.get(&wanted).copied();
    }
    let mut spans = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    let mut bytes_by_type = std::collections::BTreeMap::<&str, u64>::new();
    for _ in 0..tensor_count {
        let tensor = r.string("tensor name")?;
        let dims = r.u32()?;
        if dims == 0 || dims > MAX_DIMS {
            return Err(r.bad(format!(
                "tensor {tensor:?}: {dims} dimensions (1 to {MAX_DIMS} allowed)"
            )));
        }
        let mut shape = Vec::with_capacity(dims as usize);
        for _ in 0..dims {
            shape.push(r.u64()?);
        }
        let type_id = r.u32()?;
        let offset = r.u64()?;
        let (type_name, block, block_bytes) = ggml_type(type_id)
            .ok_or_else(|| r.bad(format!("tensor {tensor:?}: unknown tensor type {type_id}")))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| r.bad(format!("tensor {tensor:?}: shape {shape:?} overflows")))?;
        if shape[0] % block != 0 {
            return Err(r.bad(format!("tensor {tensor:?}: row of {} is not a multiple of the {type_name} block of {block}", shape[0])));
        }
        let nbytes = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| r.bad(format!("tensor {tensor:?}: size overflows")))?;
        if offset % alignment != 0 {
            return Err(r.bad(format!(
                "tensor {tensor:?}: offset {offset} is not aligned to {alignment}"
            )));
        }
        if !names.insert(tensor.clone()) {
            return Err(r.bad(format!("tensor {tensor:?} appears twice")));
        }
        info.parameters = info.parameters.saturating_add(elements);
        info.tensor_shapes.insert(tensor.clone(), shape);
        *bytes_by_type.entry(type_name).or_default() += nbytes;
        spans.push((offset, nbytes, tensor));
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    if data_start > len {
        return Err(r.bad(format!(
            "header ends at byte {data_start}, past the end of the {len}-byte file"
        )));
    }
    let data_len = len - data_start;
    spans.sort();
    let mut cursor = 0u64;
    for (offset, nbytes, tensor) in &spans {
        if *offset < cursor {
            return Err(r.bad(format!(
                "tensor {tensor:?}: data at {offset} overlaps the previous tensor"
            )));
        }
        let end = offset
            .checked_add(*nbytes)
            .filter(|&e| e <= data_len)
            .ok_or_else(|| {
                r.bad(format!(
                    "tensor {tensor:?}: data {offset}+{nbytes} runs past the end of the file"
                ))
            })?;
        cursor = end;
    }
    info.quantization = file_type
        .and_then(file_type_label)
        .map(str::to_owned)
        .or_else(|| {
            bytes_by_type
                .into_iter()
                .max_by_key(|(_, b)| *b)
                .map(|(t, _)| t.to_owned())
        });
    Ok(info)
}

#[cfg(test)]
mod tests {
    use airlock_testkit::gguf::{GgufBuilder, MetaValue};
    use proptest::prelude::*;

    use super::*;

    fn check(bytes: &[u8]) -> Result<GgufInfo> {
        validate(
            "m.gguf",
            &mut &bytes[..],
            bytes.len() as u64,
            &Limits::default(),
        )
    }

    fn reason(bytes: &[u8]) -> String {
        match check(bytes) {
            Err(Error::Gguf { reason, .. }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    fn tiny() -> GgufBuilder {
        GgufBuilder::new()
            .meta("general.architecture", MetaValue::Str("llama".into()))
            .meta("llama.context_length", MetaValue::U32(2048))
            .meta("general.file_type", MetaValue::U32(3))
            .meta(
                "tokenizer.chat_template",
                MetaValue::Str("{{ messages }}".into()),
            )
            .meta(
                "tokenizer.ggml.tokens",
                MetaValue::StrArray(vec!["a".into(), "b".into()]),
            )
            .tensor("tok_embd.weight", &[64, 2], 3)
            .tensor("norm.weight", &[8], 0)
    }

    #[test]
    fn a_valid_file_reports_its_facts() {
        let info = check(&tiny().build()).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.context_length, Some(2048));
        assert_eq!(info.quantization.as_deref(), Some("Q4_1"));
        assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(info.parameters, 136);
        assert_eq!(info.tensors, 2);
    }

    #[test]
    fn an_absurd_tensor_count_is_refused() {
        let mut bytes = tiny().build();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(reason(&bytes).contains("tensor count"));
    }

    #[test]
    fn an_absurd_string_length_is_refused() {
        let bytes = GgufBuilder::new()
            .raw_kv_with_string_len("general.name", 1 << 40)
            .build();
        assert!(reason(&bytes).contains("string length"));
    }

    #[test]
    fn an_absurd_array_length_is_refused() {
        let bytes = GgufBuilder::new()
            .raw_kv_with_array_len("tokenizer.ggml.scores", 6, u64::MAX / 2)
            .build();
        assert!(reason(&bytes).contains("array length"));
    }

    #[test]
    fn tensor_data_past_the_end_is_refused() {
        let mut bytes = tiny().build();
        bytes.truncate(bytes.len() - 1);
        assert!(reason(&bytes).contains("past the end"));
    }

    #[test]
    fn overlapping_tensors_are_refused() {
        let bytes = tiny().tensor_at("dup.weight", &[8], 0, 0).build();
        assert!(reason(&bytes).contains("overlaps"));
    }

    #[test]
    fn unknown_tensor_types_and_versions_are_refused() {
        assert!(reason(&tiny().tensor("x", &[8], 99).build()).contains("unknown tensor type"));
        let mut bytes = tiny().build();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(reason(&bytes).contains("version 1"));
    }

    #[test]
    fn truncated_headers_are_refused() {
        let bytes = tiny().build();
        for cut in [3, 10, 30, 100] {
            assert!(check(&bytes[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn validate_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
        }

        #[test]
        fn validate_never_panics_on_mutations(pos in 0usize..4096, val in any::<u8>()) {
            let mut bytes = tiny().build();
            let pos = pos % bytes.len();
            bytes[pos] = val;
            let _ = check(&bytes);
        }
    }
}
