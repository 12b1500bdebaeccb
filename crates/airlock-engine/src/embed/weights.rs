//! Reading named tensors out of a safetensors file.
//!
//! The JSON header is parsed into a table of tensors; each tensor the model needs is then
//! read straight into an `f32` buffer, converting F16 and BF16 as it goes.
//! Nothing else of the file is read, and every offset is checked against the file's length
//! before it is used.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use std::collections::HashMap;

use serde::Deserialize;

use crate::{Error, Result};

/// Headers above this are refused before being read (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// An open safetensors file and its parsed header.
pub(super) struct Weights<'a> {
    label: &'a str,
    file: File,
    tensors: HashMap<String, TensorInfo>,
    data_start: u64,
    file_len: u64,
}

impl<'a> Weights<'a> {
    pub(super) fn open(label: &'a str, path: &Path) -> Result<Self> {
        let io = |e| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| Error::model(label, "model.safetensors is shorter than its header"))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(Error::model(
                label,
                format!("model.safetensors claims a {header_len}-byte header"),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let mut table: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| Error::model(label, format!("model.safetensors header: {e}")))?;
        table.remove("__metadata__");
        let tensors = table
            .into_iter()
            .map(|(name, value)| {
                serde_json::from_value::<TensorInfo>(value)
                    .map(|info| (name.clone(), info))
                    .map_err(|e| {
                        Error::model(label, format!("model.safetensors tensor {name}: {e}"))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            label,
            file,
            tensors,
            data_start: 8 + header_len,
            file_len,
        })
    }

    /// Whether the file has tensor `name`.
    pub(super) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads tensor `name`, which must have `shape`, as `f32`s.
    pub(super) fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let label = self.label;
        let info = self.tensors.get(name).ok_or_else(|| {
            Error::model(label, format!("model.safetensors has no tensor {name}"))
        })?;
        if info.shape != shape {
            return Err(Error::model(
                label,
                format!(
                    "tensor {name} is {:?}; the config needs {shape:?}",
                    info.shape
                ),
            ));
        }
        let count: usize = shape.iter().product();
        let width = match info.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(Error::model(
                    label,
                    format!("tensor {name} is {other}; F32, F16 and BF16 are supported"),
                ));
            }
        };
        let (begin, end) = info.data_offsets;
        if end < begin
            || Some(end - begin) != count.checked_mul(width).map(|n| n as u64)
            || self.data_start.saturating_add(end) > self.file_len
        {
            return Err(Error::model(
                label,
                format!("tensor {name}: its data offsets do not match its shape or the file"),
            ));
        }
        self.file
            .seek(SeekFrom::Start(self.data_start + begin))
            .map_err(|e| Error::model(label, format!("reading {name}: {e}")))?;
        let mut out = vec![0f32; count];
        if width == 4 {
            self.file
                .read_exact(bytemuck::cast_slice_mut(&mut out))
                .map_err(|e| Error::model(label, format!("reading {name}: {e}")))?;
            if cfg!(target_endian = "big") {
                out.iter_mut()
                    .for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes()));
            }
        } else {
            let mut raw = vec![0u16; count];
            self.file
                .read_exact(bytemuck::cast_slice_mut(&mut raw))
                .map_err(|e| Error::model(label, format!("reading {name}: {e}")))?;
            let bf16 = info.dtype == "BF16";
            for (o, r) in out.iter_mut().zip(raw) {
                let bits = u16::from_le(r);
                *o = if bf16 {
                    half::bf16::from_bits(bits).to_f32()
                } else {
                    half::f16::from_bits(bits).to_f32()
                };
            }
        }
        if let Some(bad) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::model(
                label,
                format!("tensor {name} holds a non-finite value at element {bad}"),
            ));
        }
        Ok(out)
    }
}
