//! Validation of safetensors files: header length, JSON, dtypes, shapes and offsets.
//!
//! Only the header is read; the tensor data is checked by arithmetic (every byte of the data
//! section belongs to exactly one tensor, with no holes and no overlaps), never loaded.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use crate::{Error, Limits, Result};

/// What a safetensors header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsInfo {
    /// Tensor names with their dtype and element count.
    pub tensors: BTreeMap<String, (String, u64)>,
    /// Total number of elements.
    pub parameters: u64,
    /// The dtype holding the most bytes.
    pub main_dtype: Option<String>,
}

#[derive(Deserialize)]
struct TensorHeader {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Validates the safetensors file read by `reader`, of total length `len`.
pub fn validate(
    name: &str,
    reader: &mut impl Read,
    len: u64,
    limits: &Limits,
) -> Result<SafetensorsInfo> {
    let bad = |reason: String| Error::Safetensors {
        path: name.to_owned(),
        reason,
    };
    let mut prefix = [0u8; 8];
    if len < 8 {
        return Err(bad(format!(
            "file is {len} bytes, shorter than the 8-byte header length"
        )));
    }
    reader
        .read_exact(&mut prefix)
        .map_err(|e| Error::io(name, e))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > limits.max_safetensors_header {
        return Err(bad(format!(
            "header length {header_len} exceeds the limit of {}",
            limits.max_safetensors_header
        )));
    }
    if header_len > len - 8 {
        return Err(bad(format!(
            "header length {header_len} runs past the end of the {len}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|e| Error::io(name, e))?;
    if header.first() != Some(&b'{') {
        return Err(bad("header is not a JSON object".into()));
    }
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    if raw.len() as u64 > limits.max_tensors + 1 {
        return Err(bad(format!(
            "{} tensors exceed the limit of {}",
            raw.len(),
            limits.max_tensors
        )));
    }
    let data_len = len - 8 - header_len;
    let mut spans = Vec::with_capacity(raw.len());
    let mut tensors = BTreeMap::new();
    let mut bytes_by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    let mut parameters = 0u64;
    for (tensor, value) in raw {
        if tensor == "__metadata__" {
            let ok = value
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !ok {
                return Err(bad("__metadata__ must map strings to strings".into()));
            }
            continue;
        }
        let info: TensorHeader =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor {tensor:?}: {e}")))?;
        let size = dtype_size(&info.dtype)
            .ok_or_else(|| bad(format!("tensor {tensor:?}: unknown dtype {:?}", info.dtype)))?;
        let elements = info
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {tensor:?}: shape overflows")))?;
        let nbytes = elements
            .checked_mul(size)
            .ok_or_else(|| bad(format!("tensor {tensor:?}: size overflows")))?;
        let (begin, end) = info.data_offsets;
        if end < begin || end - begin != nbytes {
            return Err(bad(format!(
                "tensor {tensor:?}: offsets {begin}..{end} do not hold {nbytes} bytes of {:?} {:?}",
                info.dtype, info.shape
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "tensor {tensor:?}: offsets {begin}..{end} run past the {data_len}-byte data section"
            )));
        }
        spans.push((begin, end, tensor.clone()));
        parameters = parameters.saturating_add(elements);
        *bytes_by_dtype.entry(info.dtype.clone()).or_default() += nbytes;
        tensors.insert(tensor, (info.dtype, elements));
    }
    spans.sort();
    let mut cursor = 0u64;
    for (begin, end, tensor) in &spans {
        if *begin < cursor {
            return Err(bad(format!(
                "tensor {tensor:?}: offsets {begin}..{end} overlap the previous tensor"
            )));
        }
        if *begin > cursor {
            return Err(bad(format!(
                "tensor {tensor:?}: hole of {} bytes before it",
                begin - cursor
            )));
        }
        cursor = *end;
    }
    if cursor != data_len {
        return Err(bad(format!(
            "{} bytes after the last tensor belong to no tensor",
            data_len - cursor
        )));
    }
    let main_dtype = bytes_by_dtype
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(d, _)| d);
    Ok(SafetensorsInfo {
        tensors,
        parameters,
        main_dtype,
    })
}

#[cfg(test)]
mod tests {
    use airlock_testkit::safetensors::{Tensor, build, build_with_header};
    use proptest::prelude::*;

    use super::*;

    fn check(bytes: &[u8]) -> Result<SafetensorsInfo> {
        validate(
            "t.safetensors",
            &mut &bytes[..],
            bytes.len() as u64,
            &Limits::default(),
        )
    }

    fn reason(bytes: &[u8]) -> String {
        match check(bytes) {
            Err(Error::Safetensors { reason, .. }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn a_valid_file_reports_its_tensors() {
        let bytes = build(&[Tensor::f32("a", &[2, 3]), Tensor::f32("b", &[4])]);
        let info = check(&bytes).unwrap();
        assert_eq!(info.parameters, 10);
        assert_eq!(info.main_dtype.as_deref(), Some("F32"));
    }

    #[test]
    fn a_header_claiming_terabytes_is_refused() {
        let mut bytes = build(&[Tensor::f32("a", &[2])]);
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(reason(&bytes).contains("exceeds the limit"));
    }

    #[test]
    fn a_header_length_past_the_end_is_refused() {
        let mut bytes = build(&[Tensor::f32("a", &[2])]);
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        assert!(reason(&bytes).contains("past the end"));
    }

    #[test]
    fn overlapping_offsets_are_refused() {
        let bytes = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(reason(&bytes).contains("overlap"));
    }

    #[test]
    fn out_of_file_offsets_are_refused() {
        let bytes = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[1000,1008]}}"#,
            8,
        );
        assert!(reason(&bytes).contains("past the"));
    }

    #[test]
    fn offsets_that_disagree_with_the_shape_are_refused() {
        let bytes = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(reason(&bytes).contains("do not hold"));
    }

    #[test]
    fn holes_and_trailing_bytes_are_refused() {
        let hole = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        );
        assert!(reason(&hole).contains("hole"));
        let trailing = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            8,
        );
        assert!(reason(&trailing).contains("belong to no tensor"));
    }

    #[test]
    fn unknown_dtypes_and_overflowing_shapes_are_refused() {
        let dtype = build_with_header(
            r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        assert!(reason(&dtype).contains("unknown dtype"));
        let huge = build_with_header(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
            4,
        );
        assert!(reason(&huge).contains("overflows"));
    }

    #[test]
    fn a_pickle_is_not_a_safetensors_file() {
        let pickle = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.";
        assert!(check(pickle).is_err());
    }

    proptest! {
        #[test]
        fn validate_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
        }

        #[test]
        fn generated_files_validate(shapes in proptest::collection::vec(proptest::collection::vec(1u64..5, 0..3), 1..6)) {
            let tensors: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| Tensor::f32(&format!("t{i}"), s)).collect();
            let info = check(&build(&tensors)).unwrap();
            let expected: u64 = shapes.iter().map(|s| s.iter().product::<u64>()).sum();
            prop_assert_eq!(info.parameters, expected);
        }
    }
}
