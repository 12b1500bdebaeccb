//! Ceilings on every length and count read from untrusted input.

/// Size and count limits applied while reading bundles and model files.
///
/// Every length field in an untrusted file is checked against one of these before it is used
/// to allocate or seek, so a hostile header cannot make airlock allocate terabytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `model.sig` (Sigstore bundle) accepted.
    pub max_signature_bytes: u64,
    /// Most files in one bundle.
    pub max_files: usize,
    /// Longest path inside a bundle, in bytes.
    pub max_path_bytes: usize,
    /// Largest PAX extended header in a tar.
    pub max_pax_bytes: u64,
    /// Largest safetensors JSON header.
    pub max_safetensors_header: u64,
    /// Most tensors in one safetensors or GGUF file.
    pub max_tensors: u64,
    /// Most metadata key/value pairs in one GGUF file.
    pub max_gguf_kv: u64,
    /// Longest GGUF string (keys and values; chat templates are the long ones).
    pub max_gguf_string: u64,
    /// Most elements in one GGUF metadata array (vocabularies are the long ones).
    pub max_gguf_array: u64,
    /// Largest JSON or text side file (config, tokenizer, card, evals) in a pack source.
    pub max_side_file: u64,
    /// Most signatures on one bundle.
    pub max_signatures: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_signature_bytes: 64 << 20,
            max_files: 100_000,
            max_path_bytes: 1024,
            max_pax_bytes: 64 << 10,
            max_safetensors_header: 100_000_000,
            max_tensors: 1 << 20,
            max_gguf_kv: 1 << 16,
            max_gguf_string: 16 << 20,
            max_gguf_array: 1 << 24,
            max_side_file: 1 << 30,
            max_signatures: 64,
        }
    }
}
