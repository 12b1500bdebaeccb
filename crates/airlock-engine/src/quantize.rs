//! Re-quantising a GGUF model with llama.cpp's own quantiser (`llama_model_quantize`), the
//! code `llama-quantize` runs. This module holds the workspace's one call into C that the
//! safe bindings do not wrap; everything it passes is owned and outlives the call.

use std::ffi::CString;
use std::path::Path;

use crate::{Error, Result};

/// A GGUF quantisation llama.cpp can produce without an importance matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantType {
    name: &'static str,
    ftype: llama_cpp_sys_2::llama_ftype,
}

/// Every type [`QuantType::parse`] accepts, by its llama.cpp name.
pub const TYPES: &[QuantType] = &[
    QuantType::new("F16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16),
    QuantType::new("BF16", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_BF16),
    QuantType::new("Q8_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0),
    QuantType::new("Q6_K", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K),
    QuantType::new("Q5_K_M", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    QuantType::new("Q5_K_S", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    QuantType::new("Q5_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_1),
    QuantType::new("Q5_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_0),
    QuantType::new("Q4_K_M", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    QuantType::new("Q4_K_S", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    QuantType::new("Q4_1", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_1),
    QuantType::new("Q4_0", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0),
    QuantType::new("Q3_K_L", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    QuantType::new("Q3_K_M", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    QuantType::new("Q3_K_S", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    QuantType::new("Q2_K", llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q2_K),
];

impl QuantType {
    const fn new(name: &'static str, ftype: llama_cpp_sys_2::llama_ftype) -> Self {
        Self { name, ftype }
    }

    /// The type named `name` (case-insensitive, e.g. `q4_k_m`).
    pub fn parse(name: &str) -> Result<Self> {
        TYPES
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
                Error::Request(format!(
                    "unknown quantisation type {name:?}; one of {}",
                    known.join(", ")
                ))
            })
    }

    /// Its llama.cpp name, e.g. `Q4_K_M`.
    pub fn name(self) -> &'static str {
        self.name
    }
}

/// Writes `input` re-quantised to `kind` at `output` with `threads` threads. The input must
/// already have passed the engine's GGUF checks (the caller loaded or checked it); it is
/// checked again here because llama.cpp trusts the file's hyperparameters.
pub fn quantize(input: &Path, output: &Path, kind: QuantType, threads: usize) -> Result<()> {
    let label = input.display().to_string();
    crate::gguf_check::check(&label, input)?;
    crate::chat::llama::runtime()?;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Request(format!("{} has a NUL byte in its path", p.display())))
    };
    let (inp, out) = (c_path(input)?, c_path(output)?);
    #[allow(unsafe_code)]
    // SAFETY: `llama_model_quantize_default_params` takes nothing and returns a plain struct
    // whose pointers are null.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.nthread = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    params.ftype = kind.ftype;
    // The shipped models are often quantised already; llama.cpp refuses those without this.
    params.allow_requantize = true;
    #[allow(unsafe_code)]
    // SAFETY: both paths are NUL-terminated strings and `params` a valid struct (its pointer
    // fields still null), all alive for the whole call, which keeps none of them.
    let status =
        unsafe { llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if status != 0 {
        let _ = std::fs::remove_file(output);
        return Err(Error::model(
            &label,
            format!("llama.cpp could not quantise it to {}", kind.name),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_named_as_llama_cpp_names_them_and_unknown_ones_are_refused() {
        assert_eq!(
            QuantType::parse("q4_k_m").map(QuantType::name).ok(),
            Some("Q4_K_M")
        );
        assert_eq!(
            QuantType::parse("Q2_K").map(QuantType::name).ok(),
            Some("Q2_K")
        );
        let err = QuantType::parse("Q9_X")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("unknown quantisation type") && err.contains("Q8_0"),
            "{err}"
        );
        // IQ types need an importance matrix, which this does not take.
        assert!(QuantType::parse("IQ2_XXS").is_err());
    }
}
