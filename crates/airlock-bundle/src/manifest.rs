//! The signed manifest: an in-toto Statement v1 with the OpenSSF Model Signing v1.0 predicate
//! and the `airlock` extension (`docs/bundle-format.md`, "model.sig").
//!
//! Its RFC 8785 canonical JSON is the DSSE payload, and the SHA-256 of those bytes is the
//! bundle digest.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{CHUNK_SIZE, Sha256Digest, chunk_count};
use crate::path::BundlePath;
use crate::{Error, Limits, Result};

/// in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// OpenSSF Model Signing v1.0 predicate type.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Name of the signature file, which is never itself a resource.
pub const SIGNATURE_FILE: &str = "model.sig";
/// Version of the `airlock` predicate extension written by this crate.
pub const AIRLOCK_FORMAT: u32 = 1;

/// An in-toto Statement v1, as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// Exactly one: the model name and the digest over all resource digests.
    pub subject: Vec<Subject>,
    /// Always [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// What is signed about the model.
    pub predicate: Predicate,
}

/// The Statement's subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    /// Model (bundle) name; informative only.
    pub name: String,
    /// `{"sha256": hex}`: SHA-256 over the resource digests in listed order.
    pub digest: BTreeMap<String, String>,
}

/// The Model Signing v1.0 predicate with airlock's extension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicate {
    /// How the model was turned into resources.
    pub serialization: Serialization,
    /// Every file but `model.sig`, with its whole-file SHA-256.
    pub resources: Vec<Resource>,
    /// airlock's extension; verifiers of plain Model Signing ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airlock: Option<AirlockPredicate>,
}

/// Model Signing serialization parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serialization {
    /// `files`: one resource per file.
    pub method: String,
    /// `sha256`.
    pub hash_type: String,
    /// Always false for bundles.
    pub allow_symlinks: bool,
    /// Paths left out of the manifest.
    #[serde(default)]
    pub ignore_paths: Vec<String>,
}

/// One file and its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Path inside the bundle.
    pub name: String,
    /// `sha256`.
    pub algorithm: String,
    /// Hex digest of the whole file.
    pub digest: String,
}

/// airlock's extension of the predicate: identity, provenance, model facts, chunk hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AirlockPredicate {
    /// [`AIRLOCK_FORMAT`].
    pub format: u32,
    /// Bundle name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// `llm`, `embedding`, ...
    pub kind: String,
    /// RFC 3339 UTC creation time (from `SOURCE_DATE_EPOCH`, so packing is reproducible).
    pub created: String,
    /// Where the model came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Source revision (commit, tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// SPDX licence id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Facts read from the model files.
    pub model: ModelFacts,
    /// Digest of the bundle this one derives from (e.g. the unquantised original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Eval suites carried in the bundle and any recorded results.
    #[serde(default)]
    pub evals: Vec<EvalSuite>,
    /// How this bundle was made from `parent` (e.g. quantised), and how it compares with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<Derivation>,
    /// Chunk size of `files[].chunks`, [`CHUNK_SIZE`].
    pub chunk_size: u64,
    /// Every resource with its size and chunk digests.
    pub files: Vec<FileEntry>,
}

impl AirlockPredicate {
    /// `NAME_VERSION.airlock`, the bundle's conventional file name; `None` when the signed
    /// name or version could not be one safe path component (a signature says who, not what).
    pub fn file_name(&self) -> Option<String> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        };
        (safe(&self.name) && safe(&self.version))
            .then(|| format!("{}_{}.airlock", self.name, self.version))
    }
}

/// Facts about the model read from its files at pack time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// Architecture (e.g. `llama`, `BertModel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Total number of weights.
    pub parameters: u64,
    /// Quantisation or dtype label (e.g. `Q4_1`, `F32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Maximum context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// SHA-256 of the chat template text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
    /// Number of tensors.
    pub tensors: u64,
}

/// How a derived bundle was made from its parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derivation {
    /// `quantize`.
    pub method: String,
    /// The quantisation type made (e.g. `Q4_K_M`).
    pub quantization: String,
    /// The parent's quantisation, where it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_quantization: Option<String>,
    /// Size of the parent's weights and of these, in bytes.
    pub parent_weights_bytes: u64,
    /// Size of these weights in bytes.
    pub weights_bytes: u64,
    /// The comparison with the parent on the parent's eval suites (per-suite scores,
    /// per-item agreement, regressed items, next-token KL divergence), as the eval runner
    /// wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<serde_json::Value>,
}

/// An eval suite file carried in the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSuite {
    /// Its path (`evals/*.jsonl`).
    pub path: String,
    /// Number of cases (lines).
    pub cases: u64,
    /// The scores measured when the bundle was packed (`pack --run-evals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<EvalScore>,
}

/// A suite's scores as measured at pack time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalScore {
    /// Suite name (the file's header).
    pub suite: String,
    /// Items passed.
    pub passed: u64,
    /// Items run.
    pub total: u64,
    /// `passed / total`.
    pub score: f64,
    /// The items that failed.
    pub failed: Vec<String>,
    /// What ran it (e.g. `airlock 0.1.0 embedded llama.cpp, 2 threads`).
    pub engine: String,
}

/// Size and chunk digests of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the bundle.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Hex SHA-256 of each chunk.
    pub chunks: Vec<String>,
}

impl Statement {
    /// The statement an airlock bundle signs: `files` (path and whole-file digest, in
    /// resource order) as resources, the subject digest over them, and the extension.
    pub fn for_files<'a>(
        name: &str,
        files: impl IntoIterator<Item = (&'a str, Sha256Digest)>,
        airlock: Option<AirlockPredicate>,
    ) -> Self {
        let resources: Vec<Resource> = files
            .into_iter()
            .map(|(path, digest)| Resource {
                name: path.to_owned(),
                algorithm: "sha256".into(),
                digest: digest.to_hex(),
            })
            .collect();
        let digests: Vec<Sha256Digest> = resources
            .iter()
            .filter_map(|r| Sha256Digest::from_hex(&r.digest))
            .collect();
        Self {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: name.to_owned(),
                digest: [("sha256".to_string(), subject_digest(&digests).to_hex())].into(),
            }],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: Predicate {
                serialization: Serialization {
                    method: "files".into(),
                    hash_type: "sha256".into(),
                    allow_symlinks: false,
                    ignore_paths: vec![SIGNATURE_FILE.into()],
                },
                resources,
                airlock,
            },
        }
    }

    /// RFC 8785 canonical JSON: the exact bytes that are signed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>> {
        serde_json_canonicalizer::to_vec(self)
            .map_err(|e| Error::InvalidStatement(format!("cannot encode: {e}")))
    }
}

/// The subject digest of Model Signing v1.0: SHA-256 over the resources' raw digests in order.
pub fn subject_digest<'a>(
    resource_digests: impl IntoIterator<Item = &'a Sha256Digest>,
) -> Sha256Digest {
    let mut hasher = Sha256::new();
    for digest in resource_digests {
        hasher.update(digest.0);
    }
    Sha256Digest(hasher.finalize().into())
}

/// What verification needs from one file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Whole-file SHA-256.
    pub sha256: Sha256Digest,
    /// Size and chunk digests, where the airlock extension gives them.
    pub chunked: Option<(u64, Vec<Sha256Digest>)>,
}

/// A statement whose structure has been checked, with the exact bytes that were signed.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The parsed statement.
    pub statement: Statement,
    /// The canonical (signed) payload bytes.
    pub payload: Vec<u8>,
    /// Bundle digest: SHA-256 of `payload`.
    pub digest: Sha256Digest,
    /// Files by path, in the statement's order of resources.
    pub files: BTreeMap<BundlePath, ManifestFile>,
    /// Paths the signer declared outside the manifest (besides `model.sig`).
    pub ignore_paths: Vec<String>,
}

impl Manifest {
    /// Parses and checks a signed payload.
    pub fn parse(payload: Vec<u8>, limits: &Limits) -> Result<Self> {
        let invalid = |m: String| Error::InvalidStatement(m);
        let statement: Statement = serde_json::from_slice(&payload)
            .map_err(|e| invalid(format!("not a model-signing statement: {e}")))?;
        if statement.statement_type != STATEMENT_TYPE {
            return Err(invalid(format!(
                "_type is {:?}, expected {STATEMENT_TYPE:?}",
                statement.statement_type
            )));
        }
        if statement.predicate_type != PREDICATE_TYPE {
            return Err(invalid(format!(
                "predicateType is {:?}, expected {PREDICATE_TYPE:?}",
                statement.predicate_type
            )));
        }
        let ser = &statement.predicate.serialization;
        if ser.method != "files" || ser.hash_type != "sha256" {
            return Err(invalid(format!(
                "unsupported serialization {}/{}: only files/sha256",
                ser.method, ser.hash_type
            )));
        }
        if ser.allow_symlinks {
            return Err(invalid(
                "allow_symlinks is true: bundles never follow symlinks".into(),
            ));
        }
        let resources = &statement.predicate.resources;
        if resources.is_empty() {
            return Err(Error::EmptyManifest);
        }
        if resources.len() > limits.max_files {
            return Err(Error::LimitExceeded {
                what: "number of files in the manifest".into(),
                limit: limits.max_files as u64,
            });
        }
        let mut ordered = Vec::with_capacity(resources.len());
        let mut files = BTreeMap::new();
        for r in resources {
            let path = BundlePath::parse(r.name.as_bytes(), limits.max_path_bytes)?;
            if path.as_str() == SIGNATURE_FILE {
                return Err(invalid("model.sig is listed as a resource".into()));
            }
            if r.algorithm != "sha256" {
                return Err(invalid(format!(
                    "{}: digest algorithm {:?} is not sha256",
                    r.name, r.algorithm
                )));
            }
            let digest = Sha256Digest::from_hex(&r.digest)
                .ok_or_else(|| invalid(format!("{}: digest is not 64 hex digits", r.name)))?;
            if files
                .insert(
                    path.clone(),
                    ManifestFile {
                        sha256: digest,
                        chunked: None,
                    },
                )
                .is_some()
            {
                return Err(invalid(format!("{} is listed twice", r.name)));
            }
            ordered.push((path, digest));
        }
        let [subject] = &statement.subject[..] else {
            return Err(invalid(format!(
                "expected one subject, found {}",
                statement.subject.len()
            )));
        };
        let expected = subject_digest(ordered.iter().map(|(_, d)| d)).to_hex();
        if subject.digest.get("sha256") != Some(&expected) {
            return Err(invalid(
                "subject digest does not match the resources".into(),
            ));
        }
        if let Some(airlock) = &statement.predicate.airlock {
            check_airlock(airlock, &mut files)?;
        }
        let ignore_paths = ser
            .ignore_paths
            .iter()
            .filter(|p| *p != SIGNATURE_FILE)
            .cloned()
            .collect();
        let digest = Sha256Digest::of(&payload);
        Ok(Self {
            statement,
            payload,
            digest,
            files,
            ignore_paths,
        })
    }

    /// The airlock extension, if the bundle was packed by airlock.
    pub fn airlock(&self) -> Option<&AirlockPredicate> {
        self.statement.predicate.airlock.as_ref()
    }
}

fn check_airlock(
    airlock: &AirlockPredicate,
    files: &mut BTreeMap<BundlePath, ManifestFile>,
) -> Result<()> {
    let invalid = |m: String| Error::InvalidStatement(m);
    if airlock.format != AIRLOCK_FORMAT {
        return Err(invalid(format!(
            "airlock format {} is not supported (this build reads {AIRLOCK_FORMAT})",
            airlock.format
        )));
    }
    if airlock.chunk_size != CHUNK_SIZE {
        return Err(invalid(format!(
            "chunk size {} is not {CHUNK_SIZE}",
            airlock.chunk_size
        )));
    }
    let mut seen = BTreeSet::new();
    for entry in &airlock.files {
        let file = BundlePath::parse(entry.path.as_bytes(), usize::MAX)
            .ok()
            .and_then(|p| files.get_mut(&p))
            .ok_or_else(|| {
                invalid(format!(
                    "airlock file list names {:?}, which is not a resource",
                    entry.path
                ))
            })?;
        if !seen.insert(entry.path.as_str()) {
            return Err(invalid(format!(
                "airlock file list names {:?} twice",
                entry.path
            )));
        }
        if entry.chunks.len() as u64 != chunk_count(entry.size) {
            return Err(invalid(format!(
                "{}: {} chunk digests for {} bytes",
                entry.path,
                entry.chunks.len(),
                entry.size
            )));
        }
        let chunks = entry
            .chunks
            .iter()
            .map(|c| Sha256Digest::from_hex(c))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                invalid(format!(
                    "{}: a chunk digest is not 64 hex digits",
                    entry.path
                ))
            })?;
        file.chunked = Some((entry.size, chunks));
    }
    if let Some((path, _)) = files.iter().find(|(_, f)| f.chunked.is_none()) {
        return Err(invalid(format!(
            "resource {path} has no entry in the airlock file list"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn sample(files: &[(&str, &[u8])]) -> Statement {
        let entries = files
            .iter()
            .map(|(name, data)| {
                let chunks = if data.is_empty() {
                    vec![]
                } else {
                    vec![Sha256Digest::of(data).to_hex()]
                };
                FileEntry {
                    path: (*name).into(),
                    size: data.len() as u64,
                    chunks,
                }
            })
            .collect();
        let airlock = AirlockPredicate {
            format: AIRLOCK_FORMAT,
            name: "m".into(),
            version: "1.0.0".into(),
            kind: "llm".into(),
            created: "1970-01-01T00:00:00Z".into(),
            source: None,
            revision: None,
            license: Some("Apache-2.0".into()),
            model: ModelFacts::default(),
            parent: None,
            evals: vec![],
            derivation: None,
            chunk_size: CHUNK_SIZE,
            files: entries,
        };
        Statement::for_files(
            "m",
            files.iter().map(|(n, d)| (*n, Sha256Digest::of(d))),
            Some(airlock),
        )
    }

    fn parse(s: &Statement) -> Result<Manifest> {
        Manifest::parse(s.canonical_bytes().unwrap(), &Limits::default())
    }

    #[test]
    fn a_well_formed_statement_parses_and_its_digest_is_over_the_canonical_bytes() {
        let s = sample(&[("a.gguf", b"weights"), ("b.json", b"{}")]);
        let m = parse(&s).unwrap();
        assert_eq!(m.statement, s);
        assert_eq!(m.digest, Sha256Digest::of(&s.canonical_bytes().unwrap()));
        assert_eq!(m.files.len(), 2);
    }

    #[test]
    fn the_conventional_file_name_refuses_names_that_are_not_one_safe_component() {
        let mut a = sample(&[("a", b"x")]).predicate.airlock.unwrap();
        assert_eq!(a.file_name().as_deref(), Some("m_1.0.0.airlock"));
        for bad in ["../etc", "a/b", ".hidden", ""] {
            a.name = bad.into();
            assert_eq!(a.file_name(), None, "{bad:?}");
        }
    }

    #[test]
    fn canonical_bytes_sort_keys() {
        let bytes = sample(&[("a", b"x")]).canonical_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(
                r#"{"_type":"https://in-toto.io/Statement/v1","predicate":{"airlock":"#
            ),
            "{text}"
        );
    }

    #[test]
    fn an_empty_resource_list_is_refused() {
        let mut s = sample(&[("a", b"x")]);
        s.predicate.resources.clear();
        s.predicate.airlock = None;
        assert!(matches!(parse(&s), Err(Error::EmptyManifest)));
    }

    #[test]
    fn a_wrong_subject_digest_is_refused() {
        let mut s = sample(&[("a", b"x")]);
        s.subject[0].digest.insert("sha256".into(), "00".repeat(32));
        assert!(
            matches!(parse(&s), Err(Error::InvalidStatement(m)) if m.contains("subject digest"))
        );
    }

    #[test]
    fn another_predicate_type_is_refused() {
        let mut s = sample(&[("a", b"x")]);
        s.predicate_type = "https://slsa.dev/provenance/v1".into();
        assert!(
            matches!(parse(&s), Err(Error::InvalidStatement(m)) if m.contains("predicateType"))
        );
    }

    #[test]
    fn unsafe_resource_names_are_refused() {
        let s = sample(&[("../escape", b"x")]);
        assert!(matches!(parse(&s), Err(Error::UnsafePath { .. })));
    }

    #[test]
    fn chunk_lists_must_match_sizes() {
        let mut s = sample(&[("a", b"x")]);
        s.predicate.airlock.as_mut().unwrap().files[0].size = CHUNK_SIZE + 1;
        assert!(
            matches!(parse(&s), Err(Error::InvalidStatement(m)) if m.contains("chunk digests"))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Manifest::parse(bytes, &Limits::default());
        }

        #[test]
        fn canonical_encoding_round_trips(names in proptest::collection::btree_set("[a-z]{1,6}(/[a-z0-9][a-z0-9.]{0,11}){0,2}", 1..8), license in "[ -~\u{e9}\u{4e2d}]{0,20}") {
            let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
            let mut s = sample(&files);
            s.predicate.airlock.as_mut().unwrap().license = Some(license);
            let bytes = s.canonical_bytes().unwrap();
            let m = Manifest::parse(bytes.clone(), &Limits::default()).unwrap();
            prop_assert_eq!(m.statement.canonical_bytes().unwrap(), bytes);
        }
    }
}
