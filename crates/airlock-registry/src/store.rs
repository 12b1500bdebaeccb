//! The data directory on disk: layout, content-addressed blobs, staging, locks, and the
//! crash-test fault points.
//!
//! ```text
//! <data>/policy.toml          trust policy
//! <data>/registry.db          SQLite (WAL): versions, files, tags, approvals, exceptions
//! <data>/blobs/sha256/ab/<hex> read-only blobs named by their SHA-256
//! <data>/audit/               the audit log (see airlock-audit)
//! <data>/keys/audit.key       the audit log's note signing key (0600)
//! <data>/audit.pub            its verifier key, for auditors
//! <data>/tmp/import-*/        staging of imports in progress
//! <data>/lock                 shared by imports, exclusive for gc and fsck
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use airlock_bundle::Sha256Digest;

use crate::{Error, Result};

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.root.join("registry.db")
    }

    /// The trust policy.
    pub fn policy(&self) -> PathBuf {
        crate::policy::path_in(&self.root)
    }

    /// The audit log directory.
    pub fn audit(&self) -> PathBuf {
        self.root.join("audit")
    }

    /// The audit signing key.
    pub fn audit_key(&self) -> PathBuf {
        self.root.join("keys").join("audit.key")
    }

    /// The audit verifier key.
    pub fn audit_verifier(&self) -> PathBuf {
        self.root.join("audit.pub")
    }

    /// Root of the blob store.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob with this digest lives.
    pub fn blob(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.blobs().join(&hex[..2]).join(hex)
    }

    /// Staging area for imports.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The registry-wide lock file.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
}

/// The data directory used when neither `--data` nor `AIRLOCK_DATA` is given:
/// `$XDG_DATA_HOME/airlock`, else `$HOME/.local/share/airlock`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("airlock"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/airlock"))
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    airlock_bundle::durable::sync_dir(dir).map_err(Error::from_bundle_io)
}

/// Replaces `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    airlock_bundle::durable::write_atomic(path, bytes).map_err(Error::from_bundle_io)
}

/// Writes a new secret file with mode 0600, refusing to overwrite.
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// A lock on the whole data directory: shared for imports (which may run side by side),
/// exclusive for gc and fsck (which must not see a blob an import is still committing).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn shared(layout: &Layout) -> Result<Self> {
        Self::take(layout, false)
    }

    pub(crate) fn exclusive(layout: &Layout) -> Result<Self> {
        Self::take(layout, true)
    }

    fn take(layout: &Layout, exclusive: bool) -> Result<Self> {
        let path = layout.lock();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(|e| Error::io(&path, e))?;
        Ok(Self { _file: file })
    }
}

/// A private staging directory for one import, `tmp/import-<id>/`, with a lock file beside
/// it (`tmp/import-<id>.lock`) held while the import runs, so that a cleaner can tell an
/// abandoned one (its lock is free) from a live one. The lock is taken before the directory
/// exists, so no cleaner ever sees a live directory unlocked.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

const STAGING_PREFIX: &str = "import-";
const LOCK_SUFFIX: &str = ".lock";

impl Staging {
    pub(crate) fn create(layout: &Layout) -> Result<Self> {
        let mut id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let tmp = layout.tmp();
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let name = format!("{STAGING_PREFIX}{}", hex::encode(id));
        let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let dir = tmp.join(name);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            dir,
            lock_path,
            _lock: lock,
        })
    }

    pub(crate) fn path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{n:06}"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: what is left behind is found and removed by `remove_abandoned`.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Staging left by imports that are no longer running: `(directory, bytes)`. With
/// `remove`, each is deleted while its lock is held, so it cannot come back to life.
pub(crate) fn abandoned_staging(layout: &Layout, remove: bool) -> Result<Vec<(PathBuf, u64)>> {
    let tmp = layout.tmp();
    let entries = match std::fs::read_dir(&tmp) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&tmp, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&tmp, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file_name.strip_suffix(LOCK_SUFFIX) else {
            continue;
        };
        if !stem.starts_with(STAGING_PREFIX) {
            continue;
        }
        let lock_path = entry.path();
        let Ok(lock) = OpenOptions::new().write(true).open(&lock_path) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // a live import holds it
        }
        let dir = tmp.join(stem);
        let mut bytes = 0;
        if let Ok(files) = std::fs::read_dir(&dir) {
            for f in files.flatten() {
                bytes += f.metadata().map_or(0, |m| m.len());
            }
        }
        if remove {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
            std::fs::remove_file(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        }
        out.push((dir, bytes));
    }
    Ok(out)
}

/// Moves a verified, synced staging file into the blob store as read-only. The verified
/// copy always replaces a blob already there (another version shares the file): the store
/// never has to trust bytes it did not just check, and a damaged blob heals. Returns
/// whether the blob is new to the store.
pub(crate) fn install_blob(layout: &Layout, staged: &Path, digest: &Sha256Digest) -> Result<bool> {
    let target = layout.blob(digest);
    let existed = target.exists();
    let shard = target.parent().unwrap_or(Path::new("."));
    if !shard.exists() {
        std::fs::create_dir_all(shard).map_err(|e| Error::io(shard, e))?;
        sync_dir(&layout.blobs())?;
    }
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| Error::io(staged, e))?;
    std::fs::rename(staged, &target).map_err(|e| Error::io(&target, e))?;
    Ok(!existed)
}

/// Environment variable naming the fault point (1-based, counted across the process) at
/// which the process kills itself with SIGKILL. For crash-safety tests only.
pub const FAULT_KILL_AT_ENV: &str = "AIRLOCK_FAULT_KILL_AT";
/// Environment variable that makes every fault point print its number and label to stderr.
pub const FAULT_TRACE_ENV: &str = "AIRLOCK_FAULT_TRACE";

/// A point where a crash must leave the registry consistent. With [`FAULT_KILL_AT_ENV`] set
/// to this point's number the process dies here by SIGKILL, as if the power failed.
pub(crate) fn fault_point(label: &str) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static CONFIG: OnceLock<(Option<u32>, bool)> = OnceLock::new();
    let (kill_at, trace) = CONFIG.get_or_init(|| {
        (
            std::env::var(FAULT_KILL_AT_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
            std::env::var_os(FAULT_TRACE_ENV).is_some(),
        )
    });
    if kill_at.is_none() && !trace {
        return;
    }
    let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    if *trace {
        let _ = writeln!(std::io::stderr(), "airlock-fault-point {n} {label}");
    }
    if *kill_at == Some(n) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught or ignored; this line is not reached.
        std::process::abort();
    }
}
