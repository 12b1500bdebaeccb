//! Opening a bundle (tar or unpacked directory) and verifying it: structure, signatures
//! against a trust policy, the exact file set, sizes, and every chunk hash in parallel.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

use crate::digest::{CHUNK_SIZE, Sha256Digest};
use crate::keys::KeyId;
use crate::manifest::{Manifest, SIGNATURE_FILE};
use crate::path::BundlePath;
use crate::signature::{SigstoreBundle, TrustPolicy};
use crate::{Error, Limits, Progress, Result, tar};

/// Where a file's bytes are.
#[derive(Debug)]
struct Located {
    /// Index into [`Bundle::handles`].
    handle: usize,
    /// Offset of the file's first byte in that handle.
    offset: u64,
    size: u64,
}

/// Where a bundle's bytes are read from: one file, or a set of media volumes read as one.
#[derive(Debug)]
pub enum Source {
    /// A tar file, or one file of an unpacked directory.
    File(File),
    /// Media volumes (see [`crate::volume`]).
    Volumes(crate::volume::Span),
}

impl Source {
    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Self::File(f) => f.read_exact_at(buf, offset),
            Self::Volumes(v) => v.read_exact_at(buf, offset),
        }
    }
}

/// A bundle opened for reading: its files indexed, nothing yet trusted.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    layout: Layout,
    handles: Vec<Source>,
    files: BTreeMap<BundlePath, Located>,
    /// Top-level names starting with `.` in a directory bundle: not opened or descended into.
    hidden: Vec<String>,
}

/// How the bundle is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One POSIX tar file.
    Tar,
    /// An unpacked directory.
    Directory,
    /// A directory of media volumes.
    Volumes,
}

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Distinct trusted keys whose signatures verified.
    pub signers: Vec<KeyId>,
    /// Files checked and their total size.
    pub files: usize,
    /// Total bytes hashed.
    pub bytes: u64,
    /// Files present but left out of the manifest by the signer's `ignore_paths`.
    pub ignored: Vec<String>,
}

impl Bundle {
    /// Opens a `.airlock` tar or an unpacked bundle directory and indexes its files.
    ///
    /// For a tar this checks every header (types, paths, duplicates, truncation) and that
    /// `model.sig` comes first. For a directory it refuses symlinks and special files, except
    /// under top-level names starting with `.` (VCS metadata), which are checked against the
    /// signature's `ignore_paths` later.
    pub fn open(path: &Path, limits: &Limits) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() && crate::volume::is_volume_dir(path) {
            Self::open_volumes(path, limits)
        } else if meta.is_dir() {
            Self::open_dir(path, limits)
        } else {
            Self::open_tar(path, meta.len(), limits)
        }
    }

    fn open_tar(path: &Path, len: u64, limits: &Limits) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let entries = tar::index(&mut file, len, limits)?;
        Self::from_tar(path, Layout::Tar, Source::File(file), entries, false)
    }

    /// A bundle over an indexed tar. `model.sig` must come first when present (and with
    /// `require_signature`, it must be present).
    fn from_tar(
        path: &Path,
        layout: Layout,
        source: Source,
        entries: Vec<tar::TarEntry>,
        require_signature: bool,
    ) -> Result<Self> {
        let first_is_sig = entries.first().map(|e| e.path.as_str()) == Some(SIGNATURE_FILE);
        let has_sig = entries.iter().any(|e| e.path.as_str() == SIGNATURE_FILE);
        if !first_is_sig && (has_sig || require_signature) {
            return Err(Error::MalformedTar { offset: 0, reason: "model.sig must be the first entry, so the signature is checked before any payload is read".into() });
        }
        let files = entries
            .into_iter()
            .map(|e| {
                (
                    e.path,
                    Located {
                        handle: 0,
                        offset: e.data_offset,
                        size: e.size,
                    },
                )
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            layout,
            handles: vec![source],
            files,
            hidden: Vec::new(),
        })
    }

    /// Opens a directory of media volumes as the tar they make up. The headers must form a
    /// whole set, and the bundle digest they name must be the digest of the manifest signed
    /// in `model.sig`: volumes cut from one bundle cannot carry another's signature.
    fn open_volumes(dir: &Path, limits: &Limits) -> Result<Self> {
        let set = crate::volume::VolumeSet::open(dir, false, &crate::NoProgress)?;
        let claimed = set.bundle_digest();
        let size = set.size();
        let span = set.span();
        let entries = tar::index(&mut span.cursor(), size, limits)?;
        let bundle = Self::from_tar(dir, Layout::Volumes, Source::Volumes(span), entries, true)?;
        let signed = Sha256Digest::of(&bundle.signature(limits)?.payload()?);
        if signed != claimed {
            return Err(Error::Volume {
                kind: "volume_foreign",
                reason: format!(
                    "the volume headers name bundle sha256:{claimed}, but model.sig signs sha256:{signed}"
                ),
            });
        }
        Ok(bundle)
    }

    fn open_dir(root: &Path, limits: &Limits) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut handles = Vec::new();
        let mut hidden = Vec::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let name = entry.file_name();
                let rel = format!("{prefix}{}", name.to_string_lossy());
                if prefix.is_empty() && rel.starts_with('.') {
                    hidden.push(rel);
                    continue;
                }
                let path = BundlePath::parse(rel.as_bytes(), limits.max_path_bytes)?;
                let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
                if ft.is_dir() {
                    stack.push((entry.path(), format!("{rel}/")));
                    continue;
                }
                if !ft.is_file() {
                    let kind = if ft.is_symlink() {
                        "symbolic link"
                    } else {
                        "special file"
                    };
                    return Err(Error::UnsafeEntry { path: rel, kind });
                }
                if files.len() >= limits.max_files {
                    return Err(Error::LimitExceeded {
                        what: "number of files in the directory".into(),
                        limit: limits.max_files as u64,
                    });
                }
                // O_NOFOLLOW: a file swapped for a symlink after the listing is refused.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(entry.path())
                    .map_err(|e| Error::io(entry.path(), e))?;
                let size = file
                    .metadata()
                    .map_err(|e| Error::io(entry.path(), e))?
                    .len();
                handles.push(Source::File(file));
                files.insert(
                    path,
                    Located {
                        handle: handles.len() - 1,
                        offset: 0,
                        size,
                    },
                );
            }
        }
        hidden.sort();
        Ok(Self {
            path: root.to_owned(),
            layout: Layout::Directory,
            handles,
            files,
            hidden,
        })
    }

    /// How the bundle is stored.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Paths and sizes of every file, `model.sig` included.
    pub fn entries(&self) -> impl Iterator<Item = (&BundlePath, u64)> {
        self.files.iter().map(|(p, l)| (p, l.size))
    }

    /// Reads a small file whole, refusing anything over `limit` bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some((path, loc)) = self.files.iter().find(|(p, _)| p.as_str() == name) else {
            return Ok(None);
        };
        if loc.size > limit {
            return Err(Error::LimitExceeded {
                what: path.to_string(),
                limit,
            });
        }
        let mut buf = vec![0u8; loc.size as usize];
        self.handles[loc.handle]
            .read_exact_at(&mut buf, loc.offset)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(Some(buf))
    }

    /// Where one file's bytes are: the open file holding them, the offset of its first byte
    /// and its length. For copying with the kernel (`copy_file_range`) instead of through
    /// user space; the caller must hash what it wrote, not re-read this.
    pub fn file_range(&self, path: &BundlePath) -> Option<(&Source, u64, u64)> {
        let loc = self.files.get(path)?;
        Some((&self.handles[loc.handle], loc.offset, loc.size))
    }

    /// Copies every file `manifest` lists into `dir` (which must exist), hashing what it
    /// writes against the manifest, so the copies are exactly what was signed even if the
    /// bundle changed after it was verified. Returns the files written.
    pub fn extract(
        &self,
        manifest: &Manifest,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<usize> {
        use std::io::Write as _;
        let total: u64 = manifest
            .files
            .keys()
            .filter_map(|p| self.files.get(p).map(|l| l.size))
            .sum();
        progress.begin("extracting", total);
        let mut buf = vec![0u8; 1 << 20];
        for (path, expected) in &manifest.files {
            let (source, offset, size) = self
                .file_range(path)
                .ok_or_else(|| Error::InvalidInput(format!("{path} is missing from the bundle")))?;
            let dest = dir.join(path.as_str());
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let mut out = std::fs::File::create(&dest).map_err(|e| Error::io(&dest, e))?;
            let mut hasher = Sha256::new();
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(buf.len() as u64) as usize;
                source
                    .read_exact_at(&mut buf[..n], offset + done)
                    .map_err(|e| Error::io(&self.path, e))?;
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| Error::io(&dest, e))?;
                done += n as u64;
                progress.advance(n as u64);
            }
            let got = Sha256Digest(hasher.finalize().into());
            if got != expected.sha256 {
                return Err(Error::InvalidInput(format!(
                    "{path} changed while it was extracted (sha256:{got}, signed sha256:{})",
                    expected.sha256
                )));
            }
        }
        progress.end();
        Ok(manifest.files.len())
    }

    /// Reads and parses `model.sig` without checking any signature.
    pub fn signature(&self, limits: &Limits) -> Result<SigstoreBundle> {
        let bytes = self
            .read_small(SIGNATURE_FILE, limits.max_signature_bytes)?
            .ok_or(Error::Unsigned)?;
        SigstoreBundle::parse(&bytes, limits)
    }

    /// Full verification against `trust`.
    pub fn verify(
        &self,
        trust: &TrustPolicy,
        limits: &Limits,
        progress: &dyn Progress,
    ) -> Result<Verified> {
        let (manifest, signers) = self.signature(limits)?.verify(trust, limits)?;
        self.check_contents(manifest, signers, progress)
    }

    /// Checks that the files match `manifest` exactly; signatures are not consulted.
    ///
    /// Only for a co-signer about to add a signature, who checks what they sign; anything
    /// that decides whether to trust a bundle uses [`Bundle::verify`].
    pub fn verify_integrity_only(
        &self,
        limits: &Limits,
        progress: &dyn Progress,
    ) -> Result<Verified> {
        let signature = self.signature(limits)?;
        let manifest = Manifest::parse(signature.payload()?, limits)?;
        self.check_contents(manifest, Vec::new(), progress)
    }

    fn check_contents(
        &self,
        manifest: Manifest,
        signers: Vec<KeyId>,
        progress: &dyn Progress,
    ) -> Result<Verified> {
        if manifest.airlock().is_some() && !manifest.ignore_paths.is_empty() {
            return Err(Error::InvalidStatement(format!(
                "an airlock bundle ignores only model.sig, not {:?}",
                manifest.ignore_paths
            )));
        }
        let ignored_by = |path: &str| {
            manifest.ignore_paths.iter().any(|i| {
                path.strip_prefix(i.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        };
        for path in manifest.files.keys() {
            if !self.files.contains_key(path) {
                return Err(Error::MissingFile {
                    path: path.to_string(),
                });
            }
        }
        let mut ignored = Vec::new();
        for path in self.files.keys() {
            if path.as_str() == SIGNATURE_FILE || manifest.files.contains_key(path) {
                continue;
            }
            if ignored_by(path.as_str()) {
                ignored.push(path.to_string());
                continue;
            }
            return Err(Error::ExtraFile {
                path: path.to_string(),
            });
        }
        for name in &self.hidden {
            if !ignored_by(name) {
                return Err(Error::ExtraFile { path: name.clone() });
            }
            ignored.push(name.clone());
        }
        let mut jobs = Vec::new();
        for (path, expected) in &manifest.files {
            let loc = &self.files[path];
            match &expected.chunked {
                Some((size, chunks)) => {
                    if *size != loc.size {
                        return Err(Error::SizeMismatch {
                            path: path.to_string(),
                            expected: *size,
                            actual: loc.size,
                        });
                    }
                    for (i, digest) in chunks.iter().enumerate() {
                        let start = i as u64 * CHUNK_SIZE;
                        let len = CHUNK_SIZE.min(loc.size - start);
                        jobs.push(Job {
                            path,
                            index: Some(i as u64),
                            start,
                            len,
                            expected: *digest,
                        });
                    }
                }
                None => jobs.push(Job {
                    path,
                    index: None,
                    start: 0,
                    len: loc.size,
                    expected: expected.sha256,
                }),
            }
        }
        // Longest first, so one big whole-file job does not start last and run alone.
        jobs.sort_by_key(|j| std::cmp::Reverse(j.len));
        let bytes: u64 = jobs.iter().map(|j| j.len).sum();
        progress.begin("verifying", bytes);
        let result = self.run_jobs(&jobs, progress);
        progress.end();
        result.map_err(|e| self.explain_mismatch(e))?;
        Ok(Verified {
            files: manifest.files.len(),
            manifest,
            signers,
            bytes,
            ignored,
        })
    }

    fn run_jobs(&self, jobs: &[Job<'_>], progress: &dyn Progress) -> Result<()> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let errors = Mutex::new(Vec::new());
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(jobs.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let mut buf = vec![0u8; 256 << 10];
                    while !failed.load(Ordering::Relaxed) {
                        let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        if let Err(e) = self.check_job(job, &mut buf, progress, &failed) {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut errors) = errors.lock() {
                                errors.push((job.path.clone(), job.start, e));
                            }
                        }
                    }
                });
            }
        });
        let mut errors = errors
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Report the first fault in bundle order, whichever thread found it first.
        errors.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        match errors.into_iter().next() {
            Some((_, _, e)) => Err(e),
            None => Ok(()),
        }
    }

    fn check_job(
        &self,
        job: &Job<'_>,
        buf: &mut [u8],
        progress: &dyn Progress,
        failed: &AtomicBool,
    ) -> Result<()> {
        let loc = &self.files[job.path];
        let file = &self.handles[loc.handle];
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        while done < job.len {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let want = (job.len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..want], loc.offset + job.start + done)
                .map_err(|e| Error::io(&self.path, e))?;
            hasher.update(&buf[..want]);
            done += want as u64;
            progress.advance(want as u64);
        }
        let actual = Sha256Digest(hasher.finalize().into());
        if actual == job.expected {
            return Ok(());
        }
        Err(match job.index {
            Some(index) => Error::ChunkMismatch {
                path: job.path.to_string(),
                index,
                offset: job.start,
                expected: job.expected.to_hex(),
                actual: actual.to_hex(),
            },
            None => Error::HashMismatch {
                path: job.path.to_string(),
                expected: job.expected.to_hex(),
                actual: actual.to_hex(),
            },
        })
    }

    /// For volumes: turns a content mismatch ([`Error::ChunkMismatch`],
    /// [`Error::HashMismatch`]) into a fault of the volume holding the bad bytes; any other
    /// error, or a bundle that is not volumes, is returned unchanged. A chunk may span several volumes: then the one whose payload no longer matches
    /// its header is named, and if every header is consistent (a forged volume) the range of
    /// volumes the chunk covers is.
    pub fn explain_mismatch(&self, err: Error) -> Error {
        let Some(Source::Volumes(span)) = self.handles.first() else {
            return err;
        };
        let (path, start, len) = match &err {
            Error::ChunkMismatch { path, offset, .. } => (path, *offset, CHUNK_SIZE),
            Error::HashMismatch { path, .. } => (path, 0, u64::MAX),
            _ => return err,
        };
        let Some(loc) = self
            .files
            .iter()
            .find(|(p, _)| p.as_str() == path)
            .map(|(_, loc)| loc)
        else {
            return err;
        };
        let from = loc.offset + start;
        let to = loc.offset + start.saturating_add(len).min(loc.size);
        let suspects = span.volumes().overlapping(from, to);
        let named = match suspects.as_slice() {
            [] => return err,
            [only] => format!(
                "{}: volume {} of {}",
                only.path.display(),
                only.header.index,
                only.header.count
            ),
            several => {
                if let Some(Err(e)) = several
                    .iter()
                    .map(|v| v.check_payload(&crate::NoProgress))
                    .find(Result::is_err)
                {
                    return e;
                }
                let (first, last) = (&several[0].header, &several[several.len() - 1].header);
                format!(
                    "one of volumes {} to {} of {} (their headers are consistent, so one was forged)",
                    first.index, last.index, first.count
                )
            }
        };
        Error::Volume {
            kind: "volume_corrupt",
            reason: format!("{named} does not match the signed manifest ({err})"),
        }
    }

    /// The bundle's location on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a tar: where the entry after `model.sig` begins (its first header). Used to
    /// rewrite the signature without touching the payload.
    pub(crate) fn tar_after_signature(&self, limits: &Limits) -> Result<u64> {
        let Source::File(file) = &self.handles[0] else {
            return Err(Error::InvalidInput(
                "co-signing works on a bundle tar or directory; join the volumes first".into(),
            ));
        };
        let mut file = file;
        let len = file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        let entries = tar::index(&mut file, len, limits)?;
        Ok(entries
            .get(1)
            .map_or(len.saturating_sub(1024), |e| e.header_offset))
    }
}

struct Job<'a> {
    path: &'a BundlePath,
    index: Option<u64>,
    start: u64,
    len: u64,
    expected: Sha256Digest,
}
