//! Model file inspection: what a file is by its content, whether it may enter a bundle, and
//! the model facts it declares.

pub mod gguf;
pub mod safetensors;

/// Names refused outright: pickle-based weights and executable code.
const REFUSED_EXTENSIONS: [(&str, &str); 16] = [
    (
        "bin",
        "PyTorch .bin weights are pickles, which run code when loaded; convert to safetensors",
    ),
    (
        "pt",
        "PyTorch .pt files are pickles, which run code when loaded; convert to safetensors",
    ),
    (
        "pth",
        "PyTorch .pth files are pickles, which run code when loaded; convert to safetensors",
    ),
    ("pkl", "pickle files run code when loaded"),
    ("pickle", "pickle files run code when loaded"),
    (
        "ckpt",
        "checkpoints are pickles, which run code when loaded; convert to safetensors",
    ),
    (
        "joblib",
        "joblib files are pickles, which run code when loaded",
    ),
    ("npy", "NumPy files may hold pickled objects"),
    ("npz", "NumPy archives may hold pickled objects"),
    ("py", "Python code is never carried (remote code)"),
    ("pyc", "compiled Python is never carried"),
    ("so", "native libraries are never carried"),
    ("dll", "native libraries are never carried"),
    ("dylib", "native libraries are never carried"),
    ("exe", "executables are never carried"),
    ("sh", "scripts are never carried"),
];

/// Why `head` (a file's first bytes) is refused whatever its name, if it is.
pub fn refused_content(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x80, 2..=5, ..] => Some("content is a Python pickle, which runs code when loaded"),
        [b'P', b'K', 3, 4, ..] => {
            Some("content is a zip archive (PyTorch checkpoints are zipped pickles)")
        }
        [0x7f, b'E', b'L', b'F', ..] => Some("content is an ELF executable"),
        [b'M', b'Z', ..] => Some("content is a Windows executable"),
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xfe, 0xed, 0xfa, 0xcf, ..] => {
            Some("content is a Mach-O executable")
        }
        [b'#', b'!', ..] => Some("content is a script (#!)"),
        _ => None,
    }
}

/// Why a file name is refused, if it is.
pub fn refused_name(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    REFUSED_EXTENSIONS
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, why)| *why)
}

/// How a pack source file is checked and where it sorts in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileClass {
    /// `*.safetensors`.
    Safetensors,
    /// `*.gguf`.
    Gguf,
    /// Tokenizer files (`tokenizer.json`, `vocab.txt`, `merges.txt`, `tokenizer.model`...).
    Tokenizer,
    /// Other JSON: configs, the shard index.
    Config,
    /// `chat_template.jinja` / `*.jinja`.
    ChatTemplate,
    /// `LICENSE*`, `NOTICE*`, `COPYING*`, `USE_POLICY*`.
    License,
    /// Model card and other Markdown or text.
    Document,
    /// `evals/*.jsonl`.
    Eval,
}

impl FileClass {
    /// Classifies a path by name; `None` means the file type is not allowed in a bundle.
    pub fn of(path: &str) -> Option<Self> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let lower = name.to_ascii_lowercase();
        let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
        if path.starts_with("evals/") && ext == "jsonl" {
            return Some(Self::Eval);
        }
        Some(match ext {
            "safetensors" => Self::Safetensors,
            "gguf" => Self::Gguf,
            _ if lower.starts_with("tokenizer")
                || matches!(
                    lower.as_str(),
                    "vocab.txt"
                        | "vocab.json"
                        | "merges.txt"
                        | "special_tokens_map.json"
                        | "added_tokens.json"
                ) =>
            {
                if matches!(ext, "json" | "txt" | "model") {
                    Self::Tokenizer
                } else {
                    return None;
                }
            }
            "json" => Self::Config,
            "jinja" => Self::ChatTemplate,
            _ if ["license", "notice", "copying", "use_policy"]
                .iter()
                .any(|p| lower.starts_with(p))
                && matches!(ext, "" | "txt" | "md") =>
            {
                Self::License
            }
            "md" | "txt" => Self::Document,
            _ => return None,
        })
    }

    /// Role name recorded in the SBOM.
    pub fn role(self) -> &'static str {
        match self {
            Self::Safetensors | Self::Gguf => "weights",
            Self::Tokenizer => "tokenizer",
            Self::Config => "config",
            Self::ChatTemplate => "chat-template",
            Self::License => "license",
            Self::Document => "documentation",
            Self::Eval => "eval",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_are_refused_by_name_and_by_content() {
        assert!(refused_name("pytorch_model.bin").is_some());
        assert!(refused_name("model.PT").is_some());
        assert!(refused_name("modeling_custom.py").is_some());
        assert!(refused_name("model.safetensors").is_none());
        assert!(refused_content(b"\x80\x04\x95").is_some());
        assert!(refused_content(b"PK\x03\x04").is_some());
        assert!(refused_content(b"#!/bin/sh").is_some());
        assert!(refused_content(b"{\"a\":1}").is_none());
    }

    #[test]
    fn files_sort_weights_first_and_evals_last() {
        let mut names = [
            "evals/ref.jsonl",
            "LICENSE",
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "README.md",
            "chat_template.jinja",
        ];
        names.sort_by_key(|n| (FileClass::of(n).unwrap(), *n));
        assert_eq!(
            names,
            [
                "model.safetensors",
                "tokenizer.json",
                "config.json",
                "chat_template.jinja",
                "LICENSE",
                "README.md",
                "evals/ref.jsonl"
            ]
        );
    }

    #[test]
    fn unknown_types_have_no_class() {
        assert_eq!(FileClass::of("model.onnx"), None);
        assert_eq!(FileClass::of("tf_model.h5"), None);
        assert_eq!(FileClass::of("tokenizer.py"), None);
    }
}
