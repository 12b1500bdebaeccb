//! Who is calling: API keys from the registry, or OIDC JWTs checked against a local JWKS.
//!
//! An API key counts only as the audit log made it: a key whose row in the database differs
//! from what its `key.create` and `key.revoke` entries say (a role or clearance raised, an
//! expiry removed, a revocation undone, a row inserted by hand) is refused with a 401, and
//! the server names each such key at start and on reload.
//!
//! JWT rules, each a refusal (401) when broken:
//! - only RS256, ES256 and EdDSA; `none`, HMAC and everything else are refused before any
//!   key is touched, so an HMAC token "signed" with a public key never verifies;
//! - the header's `alg` must be the algorithm of the JWKS key it names (by `kid`, or the only
//!   key of that algorithm) — a key is never used with another algorithm;
//! - `iss` and `aud` must equal the configured values; `exp` is required; `exp` and `nbf`
//!   are checked with the configured leeway;
//! - the JWKS comes from a file: nothing is ever fetched.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use airlock_registry::{KeyRejection, KeyRole, KeyStore};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::OidcConfig;
use crate::error::{ApiError, Error, Result};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id for the audit log and limits: `apikey:<id>` or `oidc:<sub>`.
    pub id: String,
    /// Display name (the key's name, or the token's `preferred_username`/`sub`).
    pub name: String,
    /// What it may do.
    pub role: KeyRole,
    /// Highest data class it may read.
    pub clearance: String,
    /// Access groups (documents limited to groups need one of them); OIDC tokens carry
    /// them in the groups claim, API keys have none.
    pub groups: Vec<String>,
}

/// Most access groups taken from a token.
const MAX_GROUPS: usize = 256;

/// The largest token or key looked at; longer credentials are refused unread.
const MAX_CREDENTIAL_BYTES: usize = 8 << 10;

/// Checks credentials.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyStore,
    oidc: Option<Oidc>,
}

impl Authenticator {
    /// API keys from `keys` (each checked against the audit log), and JWTs if `oidc` is
    /// configured.
    pub fn new(keys: KeyStore, oidc: Option<&OidcConfig>) -> Result<Self> {
        Ok(Self {
            keys,
            oidc: oidc.map(Oidc::load).transpose()?,
        })
    }

    /// The API keys whose rows the audit log does not back: each is refused with a 401.
    pub fn unbacked_keys(&self) -> airlock_registry::Result<Vec<airlock_registry::Discrepancy>> {
        self.keys.unbacked()
    }

    /// Identifies the caller presenting `credential` (the bearer token or `x-api-key`).
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Principal, ApiError> {
        let unauthenticated = |reason: String| ApiError::Unauthenticated { reason };
        let credential = credential
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| unauthenticated("no credentials".into()))?;
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(unauthenticated("credential over 8 KiB".into()));
        }
        if credential.starts_with("alk-") {
            let found = self
                .keys
                .authenticate(credential)
                .map_err(|e| ApiError::Internal {
                    detail: format!("key lookup failed: {e}"),
                })?;
            return match found {
                Ok(key) => Ok(Principal {
                    id: format!("apikey:{}", key.id),
                    name: key.name,
                    role: key.role,
                    clearance: key.clearance,
                    groups: Vec::new(),
                }),
                Err(KeyRejection::Unknown) => Err(unauthenticated("unknown API key".into())),
                Err(KeyRejection::Revoked { id }) => {
                    Err(unauthenticated(format!("API key {id} is revoked")))
                }
                Err(KeyRejection::Expired { id }) => {
                    Err(unauthenticated(format!("API key {id} has expired")))
                }
                Err(KeyRejection::Unbacked { id, reason }) => Err(unauthenticated(format!(
                    "API key {id} is not what the audit log recorded ({reason})"
                ))),
            };
        }
        match &self.oidc {
            Some(oidc) => oidc.verify(credential).map_err(unauthenticated),
            None => Err(unauthenticated(
                "not an API key, and OIDC is not configured".into(),
            )),
        }
    }
}

/// A key from the JWKS, bound to the one algorithm it may verify.
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// OIDC token verification against a fixed key set.
struct Oidc {
    config: OidcConfig,
    keys: Arc<Vec<VerifyingKey>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Algorithms accepted, by key type. Anything else is refused.
const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

impl Oidc {
    fn load(config: &OidcConfig) -> Result<Self> {
        let keys = load_jwks(&config.jwks_file)?;
        Ok(Self {
            config: config.clone(),
            keys: Arc::new(keys),
        })
    }

    fn verify(&self, token: &str) -> std::result::Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("JWT header unreadable or algorithm not allowed: {e}"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(format!("JWT algorithm {:?} is not accepted", header.alg));
        }
        let candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .collect();
        let key = match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(format!(
                    "no {:?} key {} in the JWKS",
                    header.alg,
                    header.kid.as_deref().unwrap_or("(no kid)")
                ));
            }
            _ => return Err("JWT names no kid and several keys could verify it".into()),
        };
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| format!("JWT rejected: {e}"))?;
        self.principal(&data.claims)
    }

    fn principal(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> std::result::Result<Principal, String> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or("JWT has no usable sub claim")?;
        let roles: HashSet<&str> = match claims.get(&self.config.role_claim) {
            Some(Value::String(s)) => s.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => HashSet::new(),
        };
        let role = if self
            .config
            .admin_roles
            .iter()
            .any(|r| roles.contains(r.as_str()))
        {
            KeyRole::Admin
        } else if self.config.user_roles.is_empty()
            || self
                .config
                .user_roles
                .iter()
                .any(|r| roles.contains(r.as_str()))
        {
            KeyRole::User
        } else {
            return Err(format!(
                "JWT for {sub} carries none of the roles configured for access"
            ));
        };
        let clearance = claims
            .get(&self.config.clearance_claim)
            .and_then(Value::as_str)
            .map_or_else(|| self.config.default_clearance.clone(), str::to_owned);
        let name = claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .unwrap_or(sub)
            .to_owned();
        let groups = match claims.get(&self.config.groups_claim) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .take(MAX_GROUPS)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            id: format!("oidc:{sub}"),
            name,
            role,
            clearance,
            groups,
        })
    }
}

/// Checks that a JWKS file loads: every key usable, with an accepted algorithm.
pub fn check_jwks(path: &Path) -> Result<usize> {
    load_jwks(path).map(|keys| keys.len())
}

/// The JWKS file is small (a handful of keys); anything bigger is a mistake.
const MAX_JWKS_BYTES: u64 = 1 << 20;

fn load_jwks(path: &Path) -> Result<Vec<VerifyingKey>> {
    let bad = |reason: String| Error::Jwks {
        path: path.to_owned(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if size > MAX_JWKS_BYTES {
        return Err(bad(format!("{size} bytes, over the 1 MiB limit")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for (n, jwk) in set.keys.iter().enumerate() {
        let which = jwk
            .common
            .key_id
            .clone()
            .unwrap_or_else(|| format!("key {}", n + 1));
        // The algorithm follows from the key itself; a declared `alg` must agree with it.
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::EllipticCurve(_) => {
                return Err(bad(format!("{which}: only the P-256 curve is accepted")));
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(bad(format!(
                    "{which}: symmetric keys are not accepted (RS256, ES256, EdDSA only)"
                )));
            }
        };
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{algorithm:?}")
        {
            return Err(bad(format!(
                "{which}: declares alg {declared:?} but is a {algorithm:?} key"
            )));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{which}: {e}")))?;
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(bad("no keys".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    /// A registry with no keys, and OIDC trusting one P-256 key (from a fixed JWK).
    fn authenticator(dir: &Path) -> Authenticator {
        airlock_registry::Registry::init(dir, "user:test").unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        )
        .unwrap();
        let oidc = OidcConfig {
            issuer: "https://idp".into(),
            audience: "airlock".into(),
            jwks_file: jwks,
            role_claim: "roles".into(),
            admin_roles: vec!["admin".into()],
            user_roles: Vec::new(),
            clearance_claim: "clearance".into(),
            default_clearance: "public".into(),
            groups_claim: "groups".into(),
            leeway: Duration::from_secs(0),
        };
        Authenticator::new(KeyStore::open(dir).unwrap(), Some(&oidc)).unwrap()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn refused(auth: &Authenticator, credential: &str) -> bool {
        matches!(
            auth.authenticate(Some(credential)),
            Err(ApiError::Unauthenticated { .. })
        )
    }

    #[test]
    fn unsigned_and_hmac_tokens_are_refused_before_any_key_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path());
        let claims = b64(r#"{"iss":"https://idp","aud":"airlock","sub":"a","exp":99999999999}"#);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","kid":"k1"}"#,
            r#"{"alg":"RS256","kid":"k1"}"#,
            r#"{"alg":"ES384","kid":"k1"}"#,
        ] {
            let token = format!("{}.{claims}.{}", b64(header), b64("sig"));
            assert!(refused(&auth, &token), "{header}");
        }
        assert!(refused(&auth, ""));
        assert!(refused(&auth, &"x".repeat(MAX_CREDENTIAL_BYTES + 1)));
    }

    #[test]
    fn a_jwks_with_a_symmetric_key_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        assert!(matches!(check_jwks(&path), Err(Error::Jwks { .. })));
        std::fs::write(&path, r#"{"keys":[]}"#).unwrap();
        assert!(matches!(check_jwks(&path), Err(Error::Jwks { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_credentials_never_authenticate_and_never_panic(text in "\\PC{0,300}") {
            let dir = tempfile::tempdir().unwrap();
            let auth = authenticator(dir.path());
            prop_assert!(refused(&auth, &text));
            let prefixed = format!("alk-{text}");
            prop_assert!(refused(&auth, &prefixed));
        }

        #[test]
        fn arbitrary_jwt_shaped_tokens_never_authenticate(
            header in "\\PC{0,80}", claims in "\\PC{0,200}", signature in proptest::collection::vec(any::<u8>(), 0..80)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let auth = authenticator(dir.path());
            let token = format!(
                "{}.{}.{}",
                b64(&header),
                b64(&claims),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
            );
            prop_assert!(refused(&auth, &token));
            let es = format!("{}.{}.{}", b64(r#"{"alg":"ES256","kid":"k1"}"#), b64(&claims), b64("x"));
            prop_assert!(refused(&auth, &es));
        }
    }
}
