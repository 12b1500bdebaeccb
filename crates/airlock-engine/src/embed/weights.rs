//! Reading named tensors out of a safetensors file.
//!
//! The header is parsed (and checked) by the `safetensors` crate; each tensor the model
//! needs is then read straight into an `f32` buffer, converting F16 and BF16 as it goes.
//! Nothing else of the file is read, and every offset is checked against the file's length
//! before it is used.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::{Error, Result};

/// Headers above this are refused before being read (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100 << 20;

/// An open safetensors file and its parsed header.
pub(super) struct Weights<'a> {
    label: &'a str,
    file: File,
    metadata: Metadata,
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
        let mut header = vec![0u8; 8 + header_len as usize];
        header[..8].copy_from_slice(&len);
        file.read_exact(&mut header[8..]).map_err(io)?;
        let (_, metadata) = SafeTensors::read_metadata(&header)
            .map_err(|e| Error::model(label, format!("model.safetensors: {e}")))?;
        Ok(Self {
            label,
            file,
            metadata,
            data_start: 8 + header_len,
            file_len,
        })
    }

    /// Whether the file has tensor `name`.
    pub(super) fn has(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Reads tensor `name`, which must have `shape`, as `f32`s.
    pub(super) fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let label = self.label;
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::model(label, format!("model.safetensors has no tensor {name}")))?;
        if info.shape != shape {
            return Err(Error::model(
                label,
                format!("tensor {name} is {:?}; the config needs {shape:?}", info.shape),
            ));
        }
        let count: usize = shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::model(
                    label,
                    format!("tensor {name} is {other:?}; F32, F16 and BF16 are supported"),
                ));
            }
        };
        let (begin, end) = info.data_offsets;
        let (begin, end) = (begin as u64, end as u64);
        if end < begin
            || end - begin != (count * width) as u64
            || self.data_start + end > self.file_len
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
                out.iter_mut().for_each(|x| *x = f32::from_bits(x.to_bits().swap_bytes()));
            }
        } else {
            let mut raw = vec![0u16; count];
            self.file
                .read_exact(bytemuck::cast_slice_mut(&mut raw))
                .map_err(|e| Error::model(label, format!("reading {name}: {e}")))?;
            let bf16 = info.dtype == Dtype::BF16;
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
