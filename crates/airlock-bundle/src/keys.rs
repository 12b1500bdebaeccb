//! ECDSA P-256 signing keys and their ids.
//!
//! Private keys are PKCS#8 PEM, optionally passphrase-encrypted (PBES2); public keys are SPKI
//! PEM. A key's id is the SHA-256 of its SPKI PEM text with LF line endings, the key hint of
//! OpenSSF Model Signing, so ids agree with the `model_signing` tool.

use std::fmt;
use std::path::Path;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::OsRng;

use crate::digest::Sha256Digest;
use crate::{Error, Result};

/// The id of a public key: SHA-256 of its SPKI PEM.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Sha256Digest);

impl KeyId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.to_hex())
    }
}

/// A public key that signatures can be checked against.
#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    pem: String,
    id: KeyId,
}

impl PublicKey {
    fn from_verifying(key: VerifyingKey) -> Result<Self> {
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidInput(format!("cannot encode public key: {e}")))?;
        let id = KeyId(Sha256Digest::of(pem.as_bytes()));
        Ok(Self { key, pem, id })
    }

    /// Parses an SPKI PEM public key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(text.trim_start())
            .map_err(|e| format!("not a P-256 public key in SPKI PEM ({e})"))?;
        Self::from_verifying(key).map_err(|e| e.to_string())
    }

    /// Reads an SPKI PEM public key file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_pem(&text).map_err(|reason| Error::Key {
            path: path.into(),
            reason,
        })
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The canonical SPKI PEM text (LF line endings).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Checks a DER-encoded ECDSA-SHA256 signature over `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_der(der_signature) else {
            return false;
        };
        self.key.verify(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// A private signing key.
pub struct PrivateKey {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "PrivateKey({})", self.public.id)
    }
}

impl PrivateKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        Self::from_signing(SigningKey::random(&mut OsRng))
    }

    fn from_signing(key: SigningKey) -> Result<Self> {
        let public = PublicKey::from_verifying(*key.verifying_key())?;
        Ok(Self { key, public })
    }

    /// Parses a PKCS#8 PEM private key; `passphrase` is needed if it is encrypted.
    pub fn from_pem(text: &str, passphrase: Option<&str>) -> Result<Self, String> {
        let text = text.trim_start();
        let key = if text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            let Some(pass) = passphrase else {
                return Err("key is encrypted: a passphrase is needed".into());
            };
            SigningKey::from_pkcs8_encrypted_pem(text, pass.as_bytes())
                .map_err(|_| "cannot decrypt key: wrong passphrase or corrupt file".to_string())?
        } else {
            SigningKey::from_pkcs8_pem(text)
                .map_err(|e| format!("not a P-256 private key in PKCS#8 PEM ({e})"))?
        };
        Self::from_signing(key).map_err(|e| e.to_string())
    }

    /// True if the PEM text is an encrypted private key.
    pub fn is_encrypted_pem(text: &str) -> bool {
        text.trim_start()
            .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    }

    /// Reads a private key file.
    pub fn read(path: &Path, passphrase: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_pem(&text, passphrase).map_err(|reason| Error::Key {
            path: path.into(),
            reason,
        })
    }

    /// PKCS#8 PEM, encrypted with `passphrase` (PBES2, scrypt, AES-256-CBC) if one is given.
    pub fn to_pem(&self, passphrase: Option<&str>) -> Result<String> {
        let pem = match passphrase {
            Some(pass) => {
                self.key
                    .to_pkcs8_encrypted_pem(&mut OsRng, pass.as_bytes(), LineEnding::LF)
            }
            None => self.key.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map(|p| p.to_string())
            .map_err(|e| Error::InvalidInput(format!("cannot encode private key: {e}")))
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// DER-encoded ECDSA P-256 / SHA-256 signature over `message` (deterministic, RFC 6979).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.key.sign(message);
        let der: DerSignature = signature.to_der();
        der.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        let sig = a.sign(b"message");
        assert!(a.public().verify(b"message", &sig));
        assert!(!a.public().verify(b"messagf", &sig));
        assert!(!b.public().verify(b"message", &sig));
        assert!(!a.public().verify(b"message", b"not der"));
    }

    #[test]
    fn encrypted_keys_need_the_right_passphrase() {
        let key = PrivateKey::generate().unwrap();
        let pem = key.to_pem(Some("correct horse")).unwrap();
        assert!(PrivateKey::is_encrypted_pem(&pem));
        assert_eq!(
            PrivateKey::from_pem(&pem, Some("correct horse"))
                .unwrap()
                .public()
                .id(),
            key.public().id()
        );
        assert!(PrivateKey::from_pem(&pem, Some("wrong")).is_err());
        assert!(
            PrivateKey::from_pem(&pem, None)
                .unwrap_err()
                .contains("passphrase")
        );
    }

    #[test]
    fn key_id_is_the_sha256_of_the_public_pem() {
        let key = PrivateKey::generate().unwrap();
        let pem = key.public().pem().to_owned();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(key.public().id().0, Sha256Digest::of(pem.as_bytes()));
        // CRLF files give the same id: the id is of the canonical encoding.
        let crlf = pem.replace('\n', "\r\n");
        assert_eq!(PublicKey::from_pem(&crlf).unwrap().id(), key.public().id());
    }
}
