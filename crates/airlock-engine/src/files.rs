//! The files a model is loaded from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of one model version: bundle path → file on disk.
///
/// The registry builds this after re-hashing every blob against its recorded digest, so the
/// engine opens only verified files, by their bundle paths. Nothing a request says ever
/// becomes a path: requests name models by alias, and the alias was resolved to these files
/// when the model was loaded.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    label: String,
    files: BTreeMap<String, PathBuf>,
}

impl ModelFiles {
    /// `label` names the model in errors (e.g. `smollm2:1.0.0`).
    pub fn new(label: impl Into<String>, files: BTreeMap<String, PathBuf>) -> Self {
        Self {
            label: label.into(),
            files,
        }
    }

    /// A model made of one file, for tests and tools working outside a registry.
    pub fn single(label: impl Into<String>, bundle_path: &str, file: &Path) -> Self {
        Self::new(
            label,
            BTreeMap::from([(bundle_path.to_owned(), file.to_path_buf())]),
        )
    }

    /// Every file of a directory (recursively), for tests and tools working outside a
    /// registry.
    pub fn directory(label: impl Into<String>, dir: &Path) -> std::io::Result<Self> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(rel) = path.strip_prefix(dir) {
                    let key = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    files.insert(key, path);
                }
            }
        }
        Ok(Self::new(label, files))
    }

    /// The model's name in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file at `bundle_path`.
    pub fn get(&self, bundle_path: &str) -> Option<&Path> {
        self.files.get(bundle_path).map(PathBuf::as_path)
    }

    /// Every file: bundle path and the verified file on disk, in bundle-path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// The files whose bundle path ends with `suffix`.
    pub fn ending_with<'a>(&'a self, suffix: &'a str) -> impl Iterator<Item = (&'a str, &'a Path)> {
        self.files
            .iter()
            .filter(move |(k, _)| k.ends_with(suffix))
            .map(|(k, v)| (k.as_str(), v.as_path()))
    }
}
