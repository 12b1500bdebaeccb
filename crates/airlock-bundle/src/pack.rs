//! `pack`: validate a model source, hash it, sign it, and write a deterministic bundle.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::digest::{CHUNK_SIZE, DualHasher, FileDigests, Sha256Digest};
use crate::inspect::{self, FileClass, gguf, safetensors};
use crate::keys::PrivateKey;
use crate::manifest::{
    AIRLOCK_FORMAT, AirlockPredicate, EvalSuite, FileEntry, ModelFacts, SIGNATURE_FILE, Statement,
};
use crate::path::BundlePath;
use crate::signature::SigstoreBundle;
use crate::tar::TarWriter;
use crate::{Error, Limits, Progress, Result, sbom};

/// Name of the SBOM file.
pub const SBOM_FILE: &str = "sbom.cdx.json";
/// Name of the checksum list.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// Name the model card takes in the bundle.
pub const CARD_FILE: &str = "MODEL_CARD.md";

/// What to pack and how to label it.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Bundle name: lower-case letters, digits, `.`, `_`, `-`; up to 64 characters.
    pub name: String,
    /// Semantic version `X.Y.Z`.
    pub version: String,
    /// `llm` or `embedding`; guessed from the files when `None`.
    pub kind: Option<String>,
    /// SPDX licence expression.
    pub license: Option<String>,
    /// Where the model came from.
    pub source: Option<String>,
    /// Source revision.
    pub revision: Option<String>,
    /// Model card file (becomes `MODEL_CARD.md`).
    pub card: Option<PathBuf>,
    /// Directory of `*.jsonl` eval suites (become `evals/*.jsonl`).
    pub evals: Option<PathBuf>,
    /// Digest of the bundle this one derives from.
    pub parent: Option<String>,
    /// How it was derived from `parent`.
    pub derivation: Option<crate::manifest::Derivation>,
    /// Scores of eval suites measured before packing, by bundle path (`evals/NAME.jsonl`).
    pub eval_results: std::collections::BTreeMap<String, crate::manifest::EvalScore>,
    /// Timestamp for `created` and every tar entry (`SOURCE_DATE_EPOCH`, else 0).
    pub source_date_epoch: u64,
}

/// The outcome of a pack.
#[derive(Debug, Clone)]
pub struct PackReport {
    /// Bundle digest (SHA-256 of the signed statement).
    pub digest: Sha256Digest,
    /// The statement's airlock extension (name, version, facts, files).
    pub info: AirlockPredicate,
    /// Bytes written.
    pub bundle_size: u64,
    /// Source entries left out because they are VCS metadata (`.git`, `.gitattributes`...).
    pub skipped: Vec<String>,
}

struct SourceFile {
    path: BundlePath,
    fs_path: PathBuf,
    class: FileClass,
    size: u64,
}

/// Packs `src` (a Hugging Face-style directory or a single GGUF file) into a bundle at `out`,
/// signed by `signers` (the first is the publisher).
///
/// Nothing is written at `out` unless the whole bundle was written and synced: the bundle is
/// built in a temporary file beside it and renamed into place.
pub fn pack(
    src: &Path,
    opts: &PackOptions,
    signers: &[PrivateKey],
    out: &Path,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<PackReport> {
    check_options(opts)?;
    let Some((publisher, cosigners)) = signers.split_first() else {
        return Err(Error::InvalidInput(
            "at least one signing key is needed".into(),
        ));
    };
    let (mut files, skipped) = collect(src, opts, limits)?;
    files.sort_by(|a, b| (a.class, &a.path).cmp(&(b.class, &b.path)));
    let facts = inspect_files(&files, limits)?;
    let kind = opts
        .kind
        .clone()
        .unwrap_or_else(|| guess_kind(&files, &facts));

    let total: u64 = files.iter().map(|f| f.size).sum();
    progress.begin("hashing", total);
    let mut digests = Vec::with_capacity(files.len());
    for f in &files {
        digests.push(hash_file(&f.fs_path, progress)?);
    }
    progress.end();

    let evals = files
        .iter()
        .filter(|f| f.class == FileClass::Eval)
        .map(|f| {
            Ok(EvalSuite {
                path: f.path.to_string(),
                cases: count_cases(&f.fs_path)?,
                result: opts.eval_results.get(f.path.as_str()).cloned(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut info = AirlockPredicate {
        format: AIRLOCK_FORMAT,
        name: opts.name.clone(),
        version: opts.version.clone(),
        kind,
        created: crate::time::rfc3339(opts.source_date_epoch),
        source: opts.source.clone(),
        revision: opts.revision.clone(),
        license: opts.license.clone(),
        model: facts,
        parent: opts.parent.clone(),
        evals,
        derivation: opts.derivation.clone(),
        chunk_size: CHUNK_SIZE,
        files: Vec::new(),
    };
    let sbom_files: Vec<sbom::SbomFile<'_>> = files
        .iter()
        .zip(&digests)
        .map(|(f, d)| sbom::SbomFile {
            path: f.path.as_str(),
            role: f.class.role(),
            size: d.size,
            sha256: d.sha256,
        })
        .collect();
    let sbom_bytes = serde_json::to_vec_pretty(&sbom::build(&info, &sbom_files))
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let sbom_path = BundlePath::parse(SBOM_FILE.as_bytes(), limits.max_path_bytes)?;
    let sums_path = BundlePath::parse(SUMS_FILE.as_bytes(), limits.max_path_bytes)?;
    let mut sums = String::new();
    let sbom_digest = Sha256Digest::of(&sbom_bytes);
    sums.push_str(&format!("{}  {SBOM_FILE}\n", sbom_digest));
    for (f, d) in files.iter().zip(&digests) {
        sums.push_str(&format!("{}  {}\n", d.sha256, f.path));
    }

    let mut all: Vec<(&BundlePath, FileDigests)> = vec![
        (&sbom_path, digest_bytes(&sbom_bytes)),
        (&sums_path, digest_bytes(sums.as_bytes())),
    ];
    all.extend(files.iter().map(|f| &f.path).zip(digests.iter().cloned()));
    all.sort_by(|a, b| a.0.cmp(b.0));
    info.files = all
        .iter()
        .map(|(p, d)| FileEntry {
            path: p.to_string(),
            size: d.size,
            chunks: d.chunks.iter().map(Sha256Digest::to_hex).collect(),
        })
        .collect();
    let statement = Statement::for_files(
        &opts.name,
        all.iter().map(|(p, d)| (p.as_str(), d.sha256)),
        Some(info.clone()),
    );
    let payload = statement.canonical_bytes()?;
    let digest = Sha256Digest::of(&payload);
    let mut signature = SigstoreBundle::sign(&payload, publisher);
    for key in cosigners {
        signature.cosign(key)?;
    }
    let sig_bytes = signature.to_bytes()?;

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".airlock-pack-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    progress.begin("writing", total);
    let mut tar = TarWriter::new(
        std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
        opts.source_date_epoch,
    );
    let sig_path = BundlePath::parse(SIGNATURE_FILE.as_bytes(), limits.max_path_bytes)?;
    let io_err = |e| Error::io(out, e);
    for (path, bytes) in [
        (&sig_path, &sig_bytes),
        (&sbom_path, &sbom_bytes),
        (&sums_path, &sums.clone().into_bytes()),
    ] {
        tar.append(path, bytes.len() as u64, &mut &bytes[..], &mut |_| {})
            .map_err(io_err)?;
    }
    for (f, d) in files.iter().zip(&digests) {
        // The source is hashed again while it is copied, so a file changed after hashing
        // can never be written under the old signature.
        let mut hasher = DualHasher::new();
        let mut reader = File::open(&f.fs_path).map_err(|e| Error::io(&f.fs_path, e))?;
        tar.append(&f.path, d.size, &mut reader, &mut |bytes| {
            hasher.update(bytes);
            progress.advance(bytes.len() as u64);
        })
        .map_err(|e| Error::io(&f.fs_path, e))?;
        let again = hasher.finish();
        if again.sha256 != d.sha256
            || reader
                .read(&mut [0u8; 1])
                .map_err(|e| Error::io(&f.fs_path, e))?
                != 0
        {
            return Err(Error::InvalidInput(format!(
                "{} changed while it was being packed",
                f.fs_path.display()
            )));
        }
    }
    let mut writer = tar.finish().map_err(io_err)?;
    writer.flush().map_err(io_err)?;
    drop(writer);
    progress.end();
    tmp.as_file().sync_all().map_err(io_err)?;
    let bundle_size = tmp.as_file().metadata().map_err(io_err)?.len();
    tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    sync_dir(dir);
    Ok(PackReport {
        digest,
        info,
        bundle_size,
        skipped,
    })
}

/// Best effort: make the rename durable. Not every filesystem supports syncing a directory.
pub(crate) fn sync_dir(dir: &Path) {
    let _ = crate::durable::sync_dir(dir);
}

fn digest_bytes(bytes: &[u8]) -> FileDigests {
    let mut h = DualHasher::new();
    h.update(bytes);
    h.finish()
}

fn hash_file(path: &Path, progress: &dyn Progress) -> Result<FileDigests> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = DualHasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hasher.finish())
}

fn check_options(opts: &PackOptions) -> Result<()> {
    let name_ok = !opts.name.is_empty()
        && opts.name.len() <= 64
        && opts
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && opts.name.as_bytes()[0].is_ascii_alphanumeric();
    if !name_ok {
        return Err(Error::InvalidInput(format!(
            "invalid name {:?}: use 1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
            opts.name
        )));
    }
    let version = semver::Version::parse(&opts.version).map_err(|e| {
        Error::InvalidInput(format!(
            "invalid version {:?}: {e} (expected X.Y.Z)",
            opts.version
        ))
    })?;
    if !version.build.is_empty() {
        return Err(Error::InvalidInput(format!(
            "invalid version {:?}: build metadata (+...) is not allowed",
            opts.version
        )));
    }
    if let Some(kind) = &opts.kind
        && !matches!(kind.as_str(), "llm" | "embedding")
    {
        return Err(Error::InvalidInput(format!(
            "invalid kind {kind:?}: expected llm or embedding"
        )));
    }
    if let Some(license) = &opts.license {
        let ok = !license.is_empty()
            && license.len() <= 256
            && license
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" .-+:()".contains(&b));
        if !ok {
            return Err(Error::InvalidInput(format!(
                "invalid licence {license:?}: expected an SPDX expression such as Apache-2.0"
            )));
        }
    }
    if let Some(parent) = &opts.parent
        && Sha256Digest::from_hex(parent.strip_prefix("sha256:").unwrap_or(parent)).is_none()
    {
        return Err(Error::InvalidInput(format!(
            "invalid parent {parent:?}: expected sha256:<64 hex digits>"
        )));
    }
    Ok(())
}

fn is_vcs_metadata(name: &str) -> bool {
    name.starts_with('.')
}

fn collect(
    src: &Path,
    opts: &PackOptions,
    limits: &Limits,
) -> Result<(Vec<SourceFile>, Vec<String>)> {
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, e))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let add = |files: &mut Vec<SourceFile>, bundle_name: &str, fs_path: PathBuf| -> Result<()> {
        let path = BundlePath::parse(bundle_name.as_bytes(), limits.max_path_bytes)?;
        let shown = fs_path.display().to_string();
        if let Some(why) = inspect::refused_name(bundle_name) {
            return Err(Error::Refused {
                path: shown,
                reason: why.into(),
            });
        }
        let class = FileClass::of(path.as_str())
            .ok_or_else(|| Error::Refused { path: shown.clone(), reason: "unsupported file type (allowed: safetensors, GGUF, JSON, tokenizer files, Jinja, Markdown, text, evals/*.jsonl)".into() })?;
        let meta = std::fs::symlink_metadata(&fs_path).map_err(|e| Error::io(&fs_path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Refused {
                path: shown,
                reason: "not a regular file (symbolic links and special files are not followed)"
                    .into(),
            });
        }
        if files.iter().any(|f: &SourceFile| f.path == path) {
            return Err(Error::InvalidInput(format!(
                "two source files would both become {path} in the bundle"
            )));
        }
        if files.len() >= limits.max_files {
            return Err(Error::LimitExceeded {
                what: "number of source files".into(),
                limit: limits.max_files as u64,
            });
        }
        files.push(SourceFile {
            path,
            fs_path,
            class,
            size: meta.len(),
        });
        Ok(())
    };
    if meta.is_file() {
        let name = src.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            Error::InvalidInput(format!("{}: file name is not UTF-8", src.display()))
        })?;
        if !name.to_ascii_lowercase().ends_with(".gguf") {
            if let Some(why) = inspect::refused_name(name) {
                return Err(Error::Refused {
                    path: src.display().to_string(),
                    reason: why.into(),
                });
            }
            return Err(Error::InvalidInput(format!(
                "{}: a single-file source must be a .gguf file; pass a directory for safetensors models",
                src.display()
            )));
        }
        add(&mut files, name, src.to_path_buf())?;
    } else {
        let mut stack = vec![(src.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(&dir, e))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name().into_string().map_err(|n| {
                    Error::InvalidInput(format!("{}: file name {n:?} is not UTF-8", dir.display()))
                })?;
                let rel = format!("{prefix}{name}");
                if is_vcs_metadata(&name) {
                    skipped.push(rel);
                    continue;
                }
                let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
                if ft.is_dir() {
                    stack.push((entry.path(), format!("{rel}/")));
                } else if prefix.is_empty() && name == "README.md" && opts.card.is_none() {
                    add(&mut files, CARD_FILE, entry.path())?;
                } else {
                    add(&mut files, &rel, entry.path())?;
                }
            }
        }
    }
    if let Some(card) = &opts.card {
        add(&mut files, CARD_FILE, card.clone())?;
    }
    if let Some(evals) = &opts.evals {
        let mut entries: Vec<_> = std::fs::read_dir(evals)
            .map_err(|e| Error::io(evals, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(evals, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".jsonl") {
                return Err(Error::Refused {
                    path: entry.path().display().to_string(),
                    reason: "eval suites must be *.jsonl files".into(),
                });
            }
            add(&mut files, &format!("evals/{name}"), entry.path())?;
        }
    }
    for reserved in [SIGNATURE_FILE, SBOM_FILE, SUMS_FILE] {
        if files.iter().any(|f| f.path.as_str() == reserved) {
            return Err(Error::InvalidInput(format!(
                "the source already contains {reserved}, which pack writes itself; pack from the unsigned model files"
            )));
        }
    }
    if !files
        .iter()
        .any(|f| matches!(f.class, FileClass::Safetensors | FileClass::Gguf))
    {
        return Err(Error::InvalidInput(format!(
            "{}: no model weights (.safetensors or .gguf) found",
            src.display()
        )));
    }
    Ok((files, skipped))
}

fn open_checked(f: &SourceFile) -> Result<BufReader<File>> {
    let mut file = File::open(&f.fs_path).map_err(|e| Error::io(&f.fs_path, e))?;
    let mut head = [0u8; 8];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(&f.fs_path, e))?;
    if let Some(why) = inspect::refused_content(&head[..n]) {
        return Err(Error::Refused {
            path: f.fs_path.display().to_string(),
            reason: why.into(),
        });
    }
    // Rewind rather than reopen, so the checked head and the validated body are one file.
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(&f.fs_path, e))?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_side_file(f: &SourceFile, limits: &Limits) -> Result<Vec<u8>> {
    if f.size > limits.max_side_file {
        return Err(Error::LimitExceeded {
            what: format!("{} ({} bytes)", f.fs_path.display(), f.size),
            limit: limits.max_side_file,
        });
    }
    let mut bytes = Vec::with_capacity(f.size as usize);
    open_checked(f)?
        .take(limits.max_side_file + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&f.fs_path, e))?;
    Ok(bytes)
}

fn inspect_files(files: &[SourceFile], limits: &Limits) -> Result<ModelFacts> {
    let mut facts = ModelFacts::default();
    let mut st_tensors: BTreeMap<String, BTreeMap<String, (String, u64)>> = BTreeMap::new();
    let mut configs: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut template = None;
    for f in files {
        let shown = f.fs_path.display().to_string();
        match f.class {
            FileClass::Safetensors => {
                let info = safetensors::validate(&shown, &mut open_checked(f)?, f.size, limits)?;
                facts.format = "safetensors".into();
                facts.parameters += info.parameters;
                facts.tensors += info.tensors.len() as u64;
                facts.quantization = facts.quantization.or(info.main_dtype);
                st_tensors.insert(f.path.to_string(), info.tensors);
            }
            FileClass::Gguf => {
                let info = gguf::validate(&shown, &mut open_checked(f)?, f.size, limits)?;
                facts.format = "gguf".into();
                facts.parameters += info.parameters;
                facts.tensors += info.tensors;
                facts.architecture = facts.architecture.or(info.architecture);
                facts.quantization = facts.quantization.or(info.quantization);
                facts.context_length = facts.context_length.or(info.context_length);
                template = template.or(info.chat_template);
            }
            FileClass::Config | FileClass::Tokenizer
                if f.path.as_str().to_ascii_lowercase().ends_with(".json") =>
            {
                let bytes = read_side_file(f, limits)?;
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Refused {
                        path: shown.clone(),
                        reason: format!("not valid JSON: {e}"),
                    })?;
                if value.get("auto_map").is_some() {
                    return Err(Error::Refused {
                        path: shown,
                        reason:
                            "auto_map asks for remote Python code, which is never carried or run"
                                .into(),
                    });
                }
                configs.insert(f.path.to_string(), value);
            }
            FileClass::Config | FileClass::Tokenizer => {
                open_checked(f)?;
            }
            FileClass::ChatTemplate | FileClass::License | FileClass::Document => {
                let bytes = read_side_file(f, limits)?;
                let text = String::from_utf8(bytes).map_err(|_| Error::Refused {
                    path: shown,
                    reason: "text file is not UTF-8".into(),
                })?;
                if f.class == FileClass::ChatTemplate {
                    template = Some(text);
                }
            }
            FileClass::Eval => {
                count_cases(&f.fs_path)?;
            }
        }
    }
    if let Some(index) = configs.get("model.safetensors.index.json") {
        check_shard_index(index, &st_tensors)?;
    }
    if let Some(config) = configs.get("config.json") {
        if facts.architecture.is_none() {
            facts.architecture = config
                .get("architectures")
                .and_then(|a| a.get(0))
                .or_else(|| config.get("model_type"))
                .and_then(|v| v.as_str())
                .map(str::to_owned);
        }
        if facts.context_length.is_none() {
            facts.context_length = config
                .get("max_position_embeddings")
                .and_then(serde_json::Value::as_u64);
        }
    }
    if template.is_none() {
        template = configs
            .get("tokenizer_config.json")
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| t.as_str())
            .map(str::to_owned);
    }
    facts.chat_template_sha256 = template.map(|t| Sha256Digest::of(t.as_bytes()).to_hex());
    Ok(facts)
}

fn check_shard_index(
    index: &serde_json::Value,
    shards: &BTreeMap<String, BTreeMap<String, (String, u64)>>,
) -> Result<()> {
    let bad = |reason: String| Error::Refused {
        path: "model.safetensors.index.json".into(),
        reason,
    };
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        let tensors = shards.get(file).ok_or_else(|| {
            bad(format!(
                "weight_map names shard {file:?}, which is not in the source"
            ))
        })?;
        if !tensors.contains_key(tensor) {
            return Err(bad(format!(
                "weight_map puts {tensor:?} in {file:?}, which does not hold it"
            )));
        }
    }
    let mapped: std::collections::BTreeSet<&str> =
        map.values().filter_map(|v| v.as_str()).collect();
    if let Some(orphan) = shards.keys().find(|s| !mapped.contains(s.as_str())) {
        return Err(bad(format!(
            "shard {orphan:?} is not named by the weight_map"
        )));
    }
    Ok(())
}

fn count_cases(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut cases = 0;
    for (i, line) in std::io::BufRead::lines(BufReader::new(file)).enumerate() {
        let line = line.map_err(|e| Error::Refused {
            path: path.display().to_string(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::Refused {
            path: path.display().to_string(),
            reason: format!("line {}: not JSON: {e}", i + 1),
        })?;
        if !value.is_object() {
            return Err(Error::Refused {
                path: path.display().to_string(),
                reason: format!("line {}: each case must be a JSON object", i + 1),
            });
        }
        cases += 1;
    }
    Ok(cases)
}

fn guess_kind(files: &[SourceFile], facts: &ModelFacts) -> String {
    let sentence_transformer = files.iter().any(|f| {
        matches!(
            f.path.as_str(),
            "modules.json" | "sentence_bert_config.json"
        )
    });
    if sentence_transformer && facts.chat_template_sha256.is_none() {
        "embedding"
    } else {
        "llm"
    }
    .into()
}
