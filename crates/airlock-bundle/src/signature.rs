//! `model.sig`: a Sigstore bundle (v0.3 JSON) holding a DSSE envelope over the Statement
//! (`docs/bundle-format.md`, "model.sig").
//!
//! The first DSSE signature is the publisher's and its key id is the bundle's key hint, as
//! OpenSSF Model Signing writes it; co-signers append theirs. Signatures are DER ECDSA
//! P-256/SHA-256 over the DSSE pre-authentication encoding (PAE).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PrivateKey, PublicKey};
use crate::manifest::Manifest;
use crate::{Error, Limits, Result};

/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Media type of the Sigstore bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The Sigstore bundle as stored in `model.sig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigstoreBundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    pub media_type: String,
    /// The key hint.
    pub verification_material: VerificationMaterial,
    /// The signed envelope.
    pub dsse_envelope: Envelope,
}

/// Sigstore verification material for a bare public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// `{"hint": key id}` of the publisher's key.
    pub public_key: PublicKeyHint,
    /// Always empty: nothing here is logged to a transparency service.
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
}

/// The key hint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicKeyHint {
    /// Hex key id.
    #[serde(default)]
    pub hint: Option<String>,
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// Publisher first, then co-signers.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Base64 of the DER signature.
    pub sig: String,
    /// Hex key id of the signer (empty in signatures made by some tools).
    #[serde(default)]
    pub keyid: String,
}

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl SigstoreBundle {
    /// A bundle over `payload` signed by `publisher`.
    pub fn sign(payload: &[u8], publisher: &PrivateKey) -> Self {
        let id = publisher.public().id().to_hex();
        Self {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            verification_material: VerificationMaterial {
                public_key: PublicKeyHint {
                    hint: Some(id.clone()),
                },
                tlog_entries: vec![],
            },
            dsse_envelope: Envelope {
                payload: B64.encode(payload),
                payload_type: PAYLOAD_TYPE.into(),
                signatures: vec![EnvelopeSignature {
                    sig: B64.encode(publisher.sign(&pae(PAYLOAD_TYPE, payload))),
                    keyid: id,
                }],
            },
        }
    }

    /// Appends a co-signature over the same payload. The payload, and so the bundle digest,
    /// does not change. Signing twice with one key is refused.
    pub fn cosign(&mut self, key: &PrivateKey) -> Result<()> {
        let id = key.public().id().to_hex();
        if self.dsse_envelope.signatures.iter().any(|s| s.keyid == id) {
            return Err(Error::InvalidInput(format!(
                "key {id} has already signed this bundle"
            )));
        }
        let payload = self.payload()?;
        let message = pae(&self.dsse_envelope.payload_type, &payload);
        self.dsse_envelope.signatures.push(EnvelopeSignature {
            sig: B64.encode(key.sign(&message)),
            keyid: id,
        });
        Ok(())
    }

    /// Parses `model.sig` bytes.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Self> {
        if bytes.len() as u64 > limits.max_signature_bytes {
            return Err(Error::LimitExceeded {
                what: "model.sig".into(),
                limit: limits.max_signature_bytes,
            });
        }
        let bundle: Self =
            serde_json::from_slice(bytes).map_err(|e| Error::MalformedSignature(e.to_string()))?;
        if bundle.media_type != BUNDLE_MEDIA_TYPE {
            return Err(Error::MalformedSignature(format!(
                "media type {:?}, expected {BUNDLE_MEDIA_TYPE:?}",
                bundle.media_type
            )));
        }
        let count = bundle.dsse_envelope.signatures.len();
        if count == 0 {
            return Err(Error::MalformedSignature(
                "the envelope holds no signature".into(),
            ));
        }
        if count > limits.max_signatures {
            return Err(Error::LimitExceeded {
                what: "number of signatures".into(),
                limit: limits.max_signatures as u64,
            });
        }
        Ok(bundle)
    }

    /// The JSON text written to `model.sig`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::MalformedSignature(e.to_string()))
    }

    /// The decoded payload bytes.
    pub fn payload(&self) -> Result<Vec<u8>> {
        B64.decode(&self.dsse_envelope.payload)
            .map_err(|e| Error::MalformedSignature(format!("payload is not base64: {e}")))
    }

    /// Key ids named by the signatures, in order (the hint for an unnamed first signature).
    pub fn signer_ids(&self) -> Vec<String> {
        self.dsse_envelope
            .signatures
            .iter()
            .enumerate()
            .map(|(i, s)| self.claimed_id(i, s).unwrap_or_else(|| "unknown".into()))
            .collect()
    }

    /// True if any signature on the envelope verifies with `key`, named or not: the
    /// four-eyes check, which must also catch signatures by keys nobody trusts.
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        let Ok(payload) = self.payload() else {
            return false;
        };
        let message = pae(&self.dsse_envelope.payload_type, &payload);
        self.dsse_envelope.signatures.iter().any(|s| {
            B64.decode(&s.sig)
                .is_ok_and(|der| key.verify(&message, &der))
        })
    }

    fn claimed_id(&self, index: usize, sig: &EnvelopeSignature) -> Option<String> {
        if !sig.keyid.is_empty() {
            return Some(sig.keyid.clone());
        }
        if index == 0 {
            return self
                .verification_material
                .public_key
                .hint
                .clone()
                .filter(|h| !h.is_empty());
        }
        None
    }

    /// Checks the signatures against `trust` and, if enough distinct trusted keys signed,
    /// parses the payload as a manifest.
    ///
    /// Signatures are checked before a single byte of the payload is parsed.
    pub fn verify(&self, trust: &TrustPolicy, limits: &Limits) -> Result<(Manifest, Vec<KeyId>)> {
        let payload = self.payload()?;
        let message = pae(&self.dsse_envelope.payload_type, &payload);
        let mut valid = BTreeSet::new();
        let mut duplicates = 0;
        let mut untrusted = Vec::new();
        let mut bad = None;
        for (i, sig) in self.dsse_envelope.signatures.iter().enumerate() {
            let der = B64.decode(&sig.sig).map_err(|e| {
                Error::MalformedSignature(format!("signature {i} is not base64: {e}"))
            })?;
            let claimed = self.claimed_id(i, sig);
            let candidates: Vec<&PublicKey> = match &claimed {
                Some(id) => trust.keys.get(id).into_iter().collect(),
                None => trust.keys.values().collect(),
            };
            match candidates.into_iter().find(|k| k.verify(&message, &der)) {
                Some(key) => {
                    if !valid.insert(key.id()) {
                        duplicates += 1;
                    }
                }
                None => match claimed {
                    Some(id) if trust.keys.contains_key(&id) => bad = bad.or(Some(id)),
                    Some(id) => untrusted.push(id),
                    None => untrusted.push("unknown".into()),
                },
            }
        }
        if valid.len() < trust.threshold {
            if let Some(key_id) = bad {
                return Err(Error::BadSignature { key_id });
            }
            if valid.is_empty() {
                return Err(Error::UntrustedSigner { key_ids: untrusted });
            }
            return Err(Error::ThresholdNotMet {
                needed: trust.threshold,
                valid: valid.len(),
                duplicates,
            });
        }
        if self.dsse_envelope.payload_type != PAYLOAD_TYPE {
            return Err(Error::PayloadType {
                found: self.dsse_envelope.payload_type.clone(),
            });
        }
        Ok((
            Manifest::parse(payload, limits)?,
            valid.into_iter().collect(),
        ))
    }
}

/// The keys a verifier trusts and how many of them must have signed.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keys: BTreeMap<String, PublicKey>,
    threshold: usize,
}

impl TrustPolicy {
    /// Trust `keys`, requiring `threshold` distinct ones (at least 1) to have signed.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, threshold: usize) -> Result<Self> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (k.id().to_hex(), k)).collect();
        if threshold == 0 {
            return Err(Error::InvalidInput("threshold must be at least 1".into()));
        }
        if keys.is_empty() {
            return Err(Error::InvalidInput("no trusted key given".into()));
        }
        if threshold > keys.len() {
            return Err(Error::InvalidInput(format!(
                "threshold {threshold} exceeds the {} distinct trusted key(s) given",
                keys.len()
            )));
        }
        Ok(Self { keys, threshold })
    }

    /// The required number of distinct signers.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    fn signed(key: &PrivateKey) -> SigstoreBundle {
        let payload = sample(&[("a", b"x")]).canonical_bytes().unwrap();
        SigstoreBundle::sign(&payload, key)
    }

    fn policy(keys: &[&PrivateKey], threshold: usize) -> TrustPolicy {
        TrustPolicy::new(keys.iter().map(|k| k.public().clone()), threshold).unwrap()
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn publisher_signature_verifies_and_cosigning_keeps_the_payload() {
        let (a, b) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        let mut bundle = signed(&a);
        let before = bundle.dsse_envelope.payload.clone();
        bundle.cosign(&b).unwrap();
        assert_eq!(bundle.dsse_envelope.payload, before);
        let (_, signers) = bundle
            .verify(&policy(&[&a, &b], 2), &Limits::default())
            .unwrap();
        assert_eq!(signers.len(), 2);
        assert!(matches!(bundle.cosign(&b), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn untrusted_signer_is_named() {
        let (a, b) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        match signed(&a).verify(&policy(&[&b], 1), &Limits::default()) {
            Err(Error::UntrustedSigner { key_ids }) => {
                assert_eq!(key_ids, [a.public().id().to_hex()])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_key_twice_counts_once() {
        let (a, b) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        let mut bundle = signed(&a);
        let again = bundle.dsse_envelope.signatures[0].clone();
        bundle.dsse_envelope.signatures.push(again);
        match bundle.verify(&policy(&[&a, &b], 2), &Limits::default()) {
            Err(Error::ThresholdNotMet {
                needed: 2,
                valid: 1,
                duplicates: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_edited_payload_breaks_the_signature() {
        let a = PrivateKey::generate().unwrap();
        let mut bundle = signed(&a);
        let mut payload = bundle.payload().unwrap();
        let pos = payload.len() / 2;
        payload[pos] ^= 1;
        bundle.dsse_envelope.payload = B64.encode(payload);
        assert!(matches!(
            bundle.verify(&policy(&[&a], 1), &Limits::default()),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn a_valid_signature_over_another_payload_type_is_refused() {
        let a = PrivateKey::generate().unwrap();
        let payload = sample(&[("a", b"x")]).canonical_bytes().unwrap();
        let mut bundle = SigstoreBundle::sign(&payload, &a);
        bundle.dsse_envelope.payload_type = "application/json".into();
        bundle.dsse_envelope.signatures[0].sig =
            B64.encode(a.sign(&pae("application/json", &payload)));
        assert!(matches!(
            bundle.verify(&policy(&[&a], 1), &Limits::default()),
            Err(Error::PayloadType { .. })
        ));
    }

    #[test]
    fn threshold_zero_or_above_the_key_count_is_refused() {
        let a = PrivateKey::generate().unwrap();
        assert!(TrustPolicy::new([a.public().clone()], 0).is_err());
        assert!(TrustPolicy::new([a.public().clone()], 2).is_err());
    }

    #[test]
    fn model_sig_round_trips_through_json() {
        let a = PrivateKey::generate().unwrap();
        let bundle = signed(&a);
        assert_eq!(
            SigstoreBundle::parse(&bundle.to_bytes().unwrap(), &Limits::default()).unwrap(),
            bundle
        );
    }
}
