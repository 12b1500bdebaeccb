//! Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP `signed-note`s with
//! Ed25519, and the key strings of Go's `golang.org/x/mod/sumdb/note` package.
//!
//! A checkpoint note is
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\n\n— <key name> <base64(key hash || signature)>\n
//! ```
//!
//! where the signature covers the text before the blank line and the key hash is the first
//! four bytes of `SHA-256(key name || "\n" || 0x01 || public key)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use crate::{Error, Result};

/// Ed25519's algorithm byte in note key hashes and encoded keys.
const ALG_ED25519: u8 = 0x01;
/// Notes longer than this are refused before parsing; a checkpoint is a few hundred bytes.
pub const MAX_NOTE_BYTES: usize = 16 << 10;
/// Most signature lines one note may carry.
const MAX_SIGNATURES: usize = 16;

/// A tree head: the log's identity, its size and its Merkle root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line, unique per log.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root over those entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body: the text a signature covers.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint body (the signed text, without signatures).
    pub fn parse_body(body: &str) -> Result<Self> {
        let bad = |why: &str| Error::MalformedCheckpoint(why.to_owned());
        let mut lines = body
            .strip_suffix('\n')
            .ok_or_else(|| bad("body does not end with a newline"))?
            .split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(bad("origin line is empty"));
        }
        let size_text = lines.next().ok_or_else(|| bad("no tree size line"))?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(bad(
                "tree size is not a decimal number without leading zeros",
            ));
        }
        let size = size_text
            .parse()
            .map_err(|_| bad("tree size does not fit 64 bits"))?;
        let root_text = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = B64
            .decode(root_text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("root hash is not base64 of 32 bytes"))?;
        // Extension lines may follow; airlock writes none and ignores any.
        if lines.any(str::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Key name and key hash, as they appear in a signature line.
fn key_hash(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public.as_bytes());
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn check_key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['+', ' ', '\n']) || name.chars().any(char::is_whitespace) {
        return Err(Error::BadKey(format!(
            "key name {name:?} must be non-empty with no spaces or '+'"
        )));
    }
    Ok(())
}

/// A note signing key: a name and an Ed25519 secret key.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self> {
        check_key_name(name)?;
        let key = SigningKey::generate(&mut rand_core::OsRng);
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadKey(why.to_owned());
        let rest = text
            .trim_end()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("a note signing key starts with PRIVATE+KEY+"))?;
        let (name, hash, key) = split_key(rest).ok_or_else(|| bad("malformed signing key"))?;
        let seed: [u8; 32] = match key.split_first() {
            Some((&ALG_ED25519, seed)) => seed
                .try_into()
                .map_err(|_| bad("Ed25519 seed is not 32 bytes"))?,
            _ => return Err(bad("signing key is not Ed25519")),
        };
        let key = SigningKey::from_bytes(&seed);
        check_key_name(name)?;
        if key_hash(name, &key.verifying_key()) != hash {
            return Err(bad("signing key hash does not match its name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// The key in `PRIVATE+KEY+…` form. Secret: store it with mode 0600.
    pub fn to_key_string(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(key_hash(&self.name, &self.key.verifying_key())),
            B64.encode(key)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a checkpoint, giving the whole note text.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut blob = key_hash(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// A note verification key: `<name>+<hex hash>+<base64(0x01 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key string.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadKey(why.to_owned());
        let (name, hash, key) =
            split_key(text.trim_end()).ok_or_else(|| bad("malformed verifier key"))?;
        check_key_name(name)?;
        let bytes: [u8; 32] = match key.split_first() {
            Some((&ALG_ED25519, k)) => k
                .try_into()
                .map_err(|_| bad("Ed25519 public key is not 32 bytes"))?,
            _ => return Err(bad("verifier key is not Ed25519")),
        };
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("invalid Ed25519 point"))?;
        if key_hash(name, &key) != hash {
            return Err(bad("verifier key hash does not match its name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key string.
    pub fn to_key_string(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_hash(&self.name, &self.key)),
            B64.encode(key)
        )
    }

    /// Parses a signed checkpoint note and checks this key's signature on it.
    ///
    /// Signatures by other keys are allowed (witnesses may co-sign) but not required; at
    /// least one valid signature by this key is.
    pub fn open(&self, note: &str) -> Result<Checkpoint> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(Error::MalformedCheckpoint(format!(
                "note is over {MAX_NOTE_BYTES} bytes"
            )));
        }
        let (body, signatures) = note
            .split_once("\n\n")
            .ok_or_else(|| Error::MalformedCheckpoint("no blank line before signatures".into()))?;
        let body = format!("{body}\n");
        let checkpoint = Checkpoint::parse_body(&body)?;
        let signatures = signatures.strip_suffix('\n').ok_or_else(|| {
            Error::MalformedCheckpoint("signature block does not end with a newline".into())
        })?;
        let wanted = key_hash(&self.name, &self.key);
        let mut valid = false;
        for (i, line) in signatures.split('\n').enumerate() {
            if i >= MAX_SIGNATURES {
                return Err(Error::MalformedCheckpoint(
                    "too many signature lines".into(),
                ));
            }
            let (name, blob) = line
                .strip_prefix("\u{2014} ")
                .and_then(|l| l.split_once(' '))
                .ok_or_else(|| {
                    Error::MalformedCheckpoint(format!("bad signature line {line:?}"))
                })?;
            let blob = B64
                .decode(blob)
                .map_err(|_| Error::MalformedCheckpoint("signature is not base64".into()))?;
            if name != self.name || blob.len() != 4 + 64 || blob[..4] != wanted {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| Error::MalformedCheckpoint("malformed Ed25519 signature".into()))?;
            if self.key.verify_strict(body.as_bytes(), &signature).is_err() {
                return Err(Error::BadCheckpointSignature {
                    size: checkpoint.size,
                });
            }
            valid = true;
        }
        if !valid {
            return Err(Error::BadCheckpointSignature {
                size: checkpoint.size,
            });
        }
        Ok(checkpoint)
    }
}

/// Splits `<name>+<hex hash>+<base64 key>` into its parts.
fn split_key(text: &str) -> Option<(&str, [u8; 4], Vec<u8>)> {
    // The base64 key may itself contain '+', so split only twice.
    let mut parts = text.splitn(3, '+');
    let (name, hash, key) = (parts.next()?, parts.next()?, parts.next()?);
    if hash.len() != 8 {
        return None;
    }
    let mut h = [0u8; 4];
    hex::decode_to_slice(hash, &mut h).ok()?;
    Some((name, h, B64.decode(key).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            origin: "airlock.example/audit/1".into(),
            size,
            root: [7u8; 32],
        }
    }

    #[test]
    fn a_signed_checkpoint_has_the_c2sp_shape_and_verifies() {
        let signer = NoteSigner::generate("airlock-audit").unwrap();
        let note = signer.sign(&checkpoint(42));
        let mut lines = note.lines();
        assert_eq!(lines.next(), Some("airlock.example/audit/1"));
        assert_eq!(lines.next(), Some("42"));
        assert_eq!(lines.next(), Some(B64.encode([7u8; 32]).as_str()));
        assert_eq!(lines.next(), Some(""));
        assert!(lines.next().unwrap().starts_with("\u{2014} airlock-audit "));
        assert_eq!(signer.verifier().open(&note).unwrap(), checkpoint(42));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let signer = NoteSigner::generate("log").unwrap();
        let again = NoteSigner::parse(&signer.to_key_string()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let verifier = NoteVerifier::parse(&signer.verifier().to_key_string()).unwrap();
        assert_eq!(verifier, signer.verifier());
    }

    #[test]
    fn another_key_or_an_edited_body_is_refused() {
        let signer = NoteSigner::generate("log").unwrap();
        let other = NoteSigner::generate("log").unwrap();
        let note = signer.sign(&checkpoint(3));
        assert!(matches!(
            other.verifier().open(&note),
            Err(Error::BadCheckpointSignature { size: 3 })
        ));
        let edited = note.replacen("\n3\n", "\n4\n", 1);
        assert!(matches!(
            signer.verifier().open(&edited),
            Err(Error::BadCheckpointSignature { size: 4 })
        ));
    }

    #[test]
    fn malformed_notes_are_refused_with_a_reason() {
        let v = NoteSigner::generate("log").unwrap().verifier();
        for note in [
            "",
            "origin\n1\n",
            "origin\n01\nAAAA\n\n\u{2014} log AAAA\n",
            "origin\nx\nAAAA\n\n\u{2014} log AAAA\n",
            "origin\n1\nnot-base64\n\n\u{2014} log AAAA\n",
        ] {
            assert!(
                matches!(v.open(note), Err(Error::MalformedCheckpoint(_))),
                "{note:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let v = NoteSigner::generate("log").unwrap().verifier();
            let _ = v.open(&text);
            let _ = NoteVerifier::parse(&text);
            let _ = NoteSigner::parse(&text);
        }

        #[test]
        fn any_checkpoint_round_trips(size in any::<u64>(), root in any::<[u8; 32]>(), origin in "[a-z./0-9]{1,40}") {
            let signer = NoteSigner::generate("log").unwrap();
            let cp = Checkpoint { origin, size, root };
            prop_assert_eq!(signer.verifier().open(&signer.sign(&cp)).unwrap(), cp);
        }
    }
}
