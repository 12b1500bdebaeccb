//! The size of a bundle tar, from signed facts alone.
//!
//! A diode receiver must size everything it holds for a session (the block bitmap, the
//! block-hash table, `bundle.part` itself) before any payload arrives, and the announce that
//! states the size is not signed. What is signed is the manifest inside `model.sig`: every
//! file's path and size. airlock writes bundle tars deterministically (`docs/bundle-format.md`,
//! "Archive": `model.sig` first, then each file as a ustar header and its data padded to 512
//! bytes, a PAX header only where ustar cannot hold the path or the size, two zero blocks at
//! the end), so those facts, with the length of `model.sig`, fix the tar's size to the byte.
//! The receiver refuses an announce whose size disagrees.
//!
//! This mirrors `airlock_bundle::tar::TarWriter`; a test writes tars with it and compares.

use airlock_bundle::Manifest;
use airlock_bundle::manifest::SIGNATURE_FILE;

/// Bytes per tar block.
const BLOCK: u64 = 512;
/// Largest size a ustar octal size field holds; larger files get a PAX `size` record.
const USTAR_MAX_SIZE: u64 = (1 << 33) - 1;
/// The two zero blocks that end the archive.
const END_OF_ARCHIVE: u64 = 2 * BLOCK;

/// Why the signed facts do not fix a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The manifest has no airlock file list, so it signs digests but no sizes.
    #[error(
        "signed manifest gives no size for {path} (not an airlock bundle): its size cannot be known before it arrives"
    )]
    UnsizedFile {
        /// The first file without a signed size.
        path: String,
    },
    /// The signed sizes add up to more than 2^64 bytes.
    #[error("signed file sizes add up to more than 2^64 bytes")]
    Overflow,
}

/// The exact size of the airlock bundle tar whose `model.sig` is `signature_len` bytes and
/// whose signed manifest is `manifest`.
pub fn bundle_size(signature_len: u64, manifest: &Manifest) -> Result<u64, LayoutError> {
    let mut files = Vec::with_capacity(manifest.files.len());
    for (path, file) in &manifest.files {
        let Some((size, _)) = file.chunked else {
            return Err(LayoutError::UnsizedFile {
                path: path.to_string(),
            });
        };
        files.push((path.as_str(), size));
    }
    tar_size(std::iter::once((SIGNATURE_FILE, signature_len)).chain(files))
        .ok_or(LayoutError::Overflow)
}

/// The size of the deterministic tar holding `files` (path, size) in any order; `None` on
/// overflow.
pub fn tar_size<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> Option<u64> {
    files
        .into_iter()
        .try_fold(END_OF_ARCHIVE, |total, (path, size)| {
            total.checked_add(entry_size(path.as_bytes(), size)?)
        })
}

/// Header, data and padding of one file, with the PAX header before it if it needs one.
fn entry_size(path: &[u8], size: u64) -> Option<u64> {
    let long_path = !fits_ustar(path);
    let big = size > USTAR_MAX_SIZE;
    let mut records = 0u64;
    if long_path {
        records += pax_record_len("path".len() as u64, path.len() as u64);
    }
    if big {
        records += pax_record_len("size".len() as u64, decimal_digits(size));
    }
    let pax = if long_path || big {
        BLOCK + padded(records)?
    } else {
        0
    };
    pax.checked_add(BLOCK)?.checked_add(padded(size)?)
}

/// `n` rounded up to whole tar blocks.
fn padded(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(BLOCK)
}

/// Whether ustar's 100-byte name and 155-byte prefix can hold the path (split at a `/`).
fn fits_ustar(path: &[u8]) -> bool {
    path.len() <= 100
        || path.iter().enumerate().any(|(i, &b)| {
            let name_len = path.len() - i - 1;
            b == b'/' && i <= 155 && name_len <= 100 && name_len != 0
        })
}

/// Length of the PAX record `"<len> <key>=<value>\n"`, whose length counts its own digits.
fn pax_record_len(key_len: u64, value_len: u64) -> u64 {
    let body = key_len + value_len + 3;
    let mut len = body + 1;
    while len != body + decimal_digits(len) {
        len = body + decimal_digits(len);
    }
    len
}

fn decimal_digits(n: u64) -> u64 {
    u64::from(n.checked_ilog10().unwrap_or(0)) + 1
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use airlock_bundle::path::BundlePath;
    use airlock_bundle::tar::TarWriter;
    use proptest::prelude::*;

    use super::*;

    /// Counts what the real writer writes, keeping none of it.
    #[derive(Default)]
    struct Counter(u64);

    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written_size(files: &[(String, u64)]) -> u64 {
        let mut tar = TarWriter::new(Counter::default(), 0);
        for (path, size) in files {
            let path = BundlePath::parse(path.as_bytes(), 4096).unwrap();
            tar.append(&path, *size, &mut std::io::repeat(7), &mut |_| {})
                .unwrap();
        }
        tar.finish().unwrap().0
    }

    #[test]
    fn a_short_path_costs_a_header_and_padded_data() {
        assert_eq!(tar_size([("a", 0)]), Some(512 + 1024));
        assert_eq!(tar_size([("a", 1)]), Some(512 + 512 + 1024));
        assert_eq!(
            tar_size([("a", 512), ("b", 513)]),
            Some(3 * 512 + 2 * 512 + 1024)
        );
    }

    #[test]
    fn a_file_of_8_gib_or_more_gets_a_pax_size_record_as_the_writer_writes_it() {
        let files = [("w.safetensors".to_string(), USTAR_MAX_SIZE + 1)];
        let computed = tar_size(files.iter().map(|(p, s)| (p.as_str(), *s)));
        assert_eq!(computed, Some(written_size(&files)));
    }

    #[test]
    fn sizes_that_overflow_are_refused_not_wrapped() {
        assert_eq!(tar_size([("a", u64::MAX - 100)]), None);
        assert_eq!(tar_size([("a", u64::MAX / 2), ("b", u64::MAX / 2)]), None);
    }

    proptest! {
        #[test]
        fn the_computed_size_is_what_the_tar_writer_writes(
            files in proptest::collection::btree_map(
                "[a-z]{1,120}(/[a-z0-9_-]{1,120}){0,3}",
                0u64..3000,
                1..6,
            )
        ) {
            let files: Vec<(String, u64)> = files.into_iter().collect();
            let computed = tar_size(files.iter().map(|(p, s)| (p.as_str(), *s)));
            prop_assert_eq!(computed, Some(written_size(&files)));
        }
    }
}
