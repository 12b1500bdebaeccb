//! `sign`: add a co-signature to an existing bundle without changing its digest.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::keys::PrivateKey;
use crate::manifest::SIGNATURE_FILE;
use crate::path::BundlePath;
use crate::tar::TarWriter;
use crate::verify::{Bundle, Layout, Verified};
use crate::{Error, Limits, Progress, Result};

/// Checks that `bundle` matches its manifest, then appends a signature by `key`.
///
/// The co-signer checks the content they vouch for: every chunk is re-hashed first. The
/// rewrite is atomic: a temporary file beside the bundle is synced and renamed over it.
pub fn cosign(
    path: &Path,
    key: &PrivateKey,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<Verified> {
    let bundle = Bundle::open(path, limits)?;
    if bundle.layout() == Layout::Volumes {
        // Volume headers carry the payload hashes; a new signature would invalidate them.
        return Err(Error::InvalidInput(
            "co-sign the bundle before splitting it: join the volumes, sign, split again".into(),
        ));
    }
    let verified = bundle.verify_integrity_only(limits, progress)?;
    let mut signature = bundle.signature(limits)?;
    signature.cosign(key)?;
    let bytes = signature.to_bytes()?;
    let io = |e| Error::io(path, e);
    match bundle.layout() {
        // Refused above, before anything was written.
        Layout::Volumes => {}
        Layout::Directory => {
            let mut tmp = tempfile::Builder::new()
                .prefix(".model.sig.")
                .tempfile_in(path)
                .map_err(io)?;
            tmp.write_all(&bytes).map_err(io)?;
            tmp.as_file().sync_all().map_err(io)?;
            tmp.persist(path.join(SIGNATURE_FILE))
                .map_err(|e| Error::io(path, e.error))?;
            crate::pack::sync_dir(path);
        }
        Layout::Tar => {
            let rest = bundle.tar_after_signature(limits)?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::Builder::new()
                .prefix(".airlock-sign-")
                .tempfile_in(dir)
                .map_err(|e| Error::io(dir, e))?;
            // Entry 0 is model.sig (checked by `open`); reuse its mtime-free header layout by
            // writing a fresh deterministic one, then copy every later byte unchanged.
            let mtime = tar_mtime(path)?;
            let sig_path = BundlePath::parse(SIGNATURE_FILE.as_bytes(), limits.max_path_bytes)?;
            let mut writer = TarWriter::new(Vec::new(), mtime);
            writer
                .append(&sig_path, bytes.len() as u64, &mut &bytes[..], &mut |_| {})
                .map_err(io)?;
            let mut head = writer.finish().map_err(io)?;
            head.truncate(head.len() - 1024);
            tmp.write_all(&head).map_err(io)?;
            let mut src = File::open(path).map_err(io)?;
            src.seek(SeekFrom::Start(rest)).map_err(io)?;
            std::io::copy(&mut src, tmp.as_file_mut()).map_err(io)?;
            tmp.as_file().sync_all().map_err(io)?;
            tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
            crate::pack::sync_dir(dir);
        }
    }
    Ok(verified)
}

/// The mtime of the tar's first header, so a co-signed bundle keeps its timestamp.
fn tar_mtime(path: &Path) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut field = [0u8; 12];
    file.read_exact_at(&mut field, 136)
        .map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&field)
        .unwrap_or("")
        .trim_matches(|c| c == '\0' || c == ' ');
    Ok(u64::from_str_radix(text, 8).unwrap_or(0))
}
