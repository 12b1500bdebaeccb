//! Signed records made on the isolated side: approvals and downgrade exceptions.
//!
//! Each is canonical JSON in a DSSE envelope signed by an approver's P-256 key, so it can be
//! checked again later (at tag time, at activation, by an auditor) without trusting the
//! database it is stored in.

use airlock_bundle::signature::pae;
use airlock_bundle::{PrivateKey, PublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// DSSE payload type of an approval.
pub const APPROVAL_TYPE: &str = "application/vnd.airlock.approval.v1+json";
/// DSSE payload type of a downgrade exception.
pub const EXCEPTION_TYPE: &str = "application/vnd.airlock.downgrade-exception.v1+json";

/// An approver's decision that a version may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `sha256:<hex>` of the bundle: the approval binds these exact bytes.
    pub bundle: String,
    /// Approver key id.
    pub approver: String,
    /// RFC 3339 time of approval.
    pub time: String,
}

/// An approver's permission to import one older version, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DowngradeException {
    /// Model name.
    pub name: String,
    /// The older version allowed.
    pub version: String,
    /// Approver key id.
    pub approver: String,
    /// RFC 3339 expiry.
    pub expires: String,
    /// Why.
    pub reason: String,
    /// RFC 3339 time it was made.
    pub time: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeSignature {
    keyid: String,
    sig: String,
}

/// Signs `record` as a DSSE envelope (JSON text).
pub fn sign<T: Serialize>(record: &T, payload_type: &str, key: &PrivateKey) -> Result<String> {
    let payload = serde_json_canonicalizer::to_vec(record)
        .map_err(|e| Error::Usage(format!("cannot encode record: {e}")))?;
    let envelope = Envelope {
        payload_type: payload_type.to_owned(),
        payload: B64.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: key.public().id().to_hex(),
            sig: B64.encode(key.sign(&pae(payload_type, &payload))),
        }],
    };
    serde_json::to_string(&envelope).map_err(|e| Error::Usage(e.to_string()))
}

/// The key id an envelope claims to be signed by (unverified).
pub fn claimed_signer(envelope: &str) -> Option<String> {
    let env: Envelope = serde_json::from_str(envelope).ok()?;
    env.signatures.first().map(|s| s.keyid.clone())
}

/// Checks the envelope's signature with `key` and returns the record it carries.
pub fn open<T: DeserializeOwned>(envelope: &str, payload_type: &str, key: &PublicKey) -> Result<T> {
    let bad = |why: &str| Error::refused("bad_record_signature", why.to_owned());
    let env: Envelope =
        serde_json::from_str(envelope).map_err(|_| bad("signed record is malformed"))?;
    if env.payload_type != payload_type {
        return Err(bad("signed record has the wrong payload type"));
    }
    let payload = B64
        .decode(&env.payload)
        .map_err(|_| bad("signed record payload is not base64"))?;
    let message = pae(payload_type, &payload);
    let valid = env.signatures.iter().any(|s| {
        B64.decode(&s.sig)
            .is_ok_and(|der| key.verify(&message, &der))
    });
    if !valid {
        return Err(bad("signed record does not verify with the approver's key"));
    }
    serde_json::from_slice(&payload).map_err(|_| bad("signed record payload is malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(approver: &str) -> Approval {
        Approval {
            name: "m".into(),
            version: "1.0.0".into(),
            bundle: format!("sha256:{}", "0".repeat(64)),
            approver: approver.into(),
            time: "2026-11-22T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_signed_approval_opens_only_with_its_key_and_type() {
        let key = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let record = approval(&key.public().id().to_hex());
        let env = sign(&record, APPROVAL_TYPE, &key).unwrap();
        assert_eq!(
            open::<Approval>(&env, APPROVAL_TYPE, key.public()).unwrap(),
            record
        );
        assert_eq!(claimed_signer(&env).unwrap(), key.public().id().to_hex());
        assert!(open::<Approval>(&env, APPROVAL_TYPE, other.public()).is_err());
        assert!(open::<Approval>(&env, EXCEPTION_TYPE, key.public()).is_err());
        let tampered = env.replace(
            &B64.encode(serde_json_canonicalizer::to_vec(&record).unwrap()),
            &B64.encode(b"{}"),
        );
        assert!(open::<Approval>(&tampered, APPROVAL_TYPE, key.public()).is_err());
    }
}
