//! What an ingest reads: files, directory trees, and git repositories (the tracked files at
//! one commit, read with libgit2, never the working tree).

use std::path::{Path, PathBuf};

use crate::parse::{Format, ParseLimits};
use crate::{Error, Result};

/// Most files one input may expand to.
const MAX_FILES: usize = 1_000_000;

/// Where a document's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// A file on disk.
    File(PathBuf),
    /// A blob of the input's repository (read when its turn comes).
    Blob {
        /// Its id.
        oid: git2::Oid,
        /// Whether its name says nothing of its type: taken as text only if it is text.
        sniff: bool,
    },
}

/// One file to ingest.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Its identity (an absolute path, or repository path and file path).
    pub(crate) id: String,
    /// The input it came from.
    pub(crate) root: String,
    /// Its path under the input, `/`-separated, for rules.
    pub(crate) relative: String,
    /// How to parse it.
    pub(crate) format: Format,
    /// Its bytes.
    pub(crate) content: Content,
    /// The commit it was read at, for repository files.
    pub(crate) commit: Option<String>,
}

/// What an input expands to, and what was passed over.
#[derive(Debug, Default)]
pub(crate) struct Expanded {
    pub(crate) files: Vec<SourceFile>,
    /// Files of a type no parser reads, or binary files of a repository.
    pub(crate) skipped: Vec<String>,
}

/// The files of `input`: itself, the files of its tree, or a repository's files at `rev`.
pub(crate) fn expand(input: &Path, rev: Option<&str>, limits: &ParseLimits) -> Result<Expanded> {
    let io = |e| Error::Io {
        path: input.to_owned(),
        source: e,
    };
    let root = input.canonicalize().map_err(io)?;
    let root_text = root.to_string_lossy().into_owned();
    let meta = std::fs::symlink_metadata(&root).map_err(io)?;
    if meta.is_file() {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let format = Format::from_name(&name).unwrap_or(Format::Text);
        return Ok(Expanded {
            files: vec![SourceFile {
                id: root_text.clone(),
                root: root_text,
                relative: name,
                format,
                content: Content::File(root),
                commit: None,
            }],
            skipped: Vec::new(),
        });
    }
    if root.join(".git").exists() || rev.is_some() {
        return repository(&root, rev.unwrap_or("HEAD"), limits);
    }
    tree(&root)
}

fn tree(root: &Path) -> Result<Expanded> {
    let mut out = Expanded::default();
    let root_text = root.to_string_lossy().into_owned();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Links are not followed: an input names what it holds.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_else(|_| name.clone());
                match Format::from_name(&name) {
                    Some(format) => out.files.push(SourceFile {
                        id: path.to_string_lossy().into_owned(),
                        root: root_text.clone(),
                        relative,
                        format,
                        content: Content::File(path),
                        commit: None,
                    }),
                    None => out.skipped.push(relative),
                }
                if out.files.len() > MAX_FILES {
                    return Err(Error::Usage(format!(
                        "{} holds more than {MAX_FILES} files; ingest it in parts",
                        root.display()
                    )));
                }
            }
        }
    }
    out.files.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn repository(root: &Path, rev: &str, limits: &ParseLimits) -> Result<Expanded> {
    let git = |e: git2::Error| Error::Usage(format!("{}: {}", root.display(), e.message()));
    let repo = git2::Repository::open(root).map_err(git)?;
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| {
            Error::Usage(format!(
                "{}: revision {rev:?}: {}",
                root.display(),
                e.message()
            ))
        })?;
    let commit_id = commit.id().to_string();
    let tree = commit.tree().map_err(git)?;
    let odb = repo.odb().map_err(git)?;
    let root_text = root.to_string_lossy().into_owned();
    let mut out = Expanded::default();
    let mut blobs = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            let name = entry.name().unwrap_or_default().to_owned();
            blobs.push((format!("{dir}{name}"), entry.id()));
        }
        if blobs.len() > MAX_FILES {
            git2::TreeWalkResult::Abort
        } else {
            git2::TreeWalkResult::Ok
        }
    })
    .map_err(git)?;
    for (relative, oid) in blobs {
        // The size first: a huge blob is never read.
        let (size, _) = odb.read_header(oid).map_err(git)?;
        if size as u64 > limits.max_file_bytes {
            out.skipped.push(format!(
                "{relative} ({})",
                crate::parse::over("the file", size as u64, limits.max_file_bytes)
            ));
            continue;
        }
        let (format, sniff) = match Format::from_name(&relative) {
            Some(format) => (format, false),
            // Other tracked files count as text when they are text.
            None => (Format::Text, true),
        };
        out.files.push(SourceFile {
            id: format!("{root_text}/{relative}"),
            root: root_text.clone(),
            relative,
            format,
            content: Content::Blob { oid, sniff },
            commit: Some(commit_id.clone()),
        });
    }
    Ok(out)
}

/// Reads a repository's blob: `None` when `sniff` is set and it is not text.
pub(crate) fn read_blob(
    repo: &git2::Repository,
    oid: git2::Oid,
    sniff: bool,
) -> Result<Option<Vec<u8>>> {
    let blob = repo
        .find_blob(oid)
        .map_err(|e| Error::Usage(format!("blob {oid}: {}", e.message())))?;
    if sniff && (blob.is_binary() || std::str::from_utf8(blob.content()).is_err()) {
        return Ok(None);
    }
    Ok(Some(blob.content().to_vec()))
}
