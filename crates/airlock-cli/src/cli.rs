//! Command-line structure (clap). Only argument definitions live here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Carry open-weight LLMs across an air gap as signed, verifiable bundles.
///
/// Connected side: `keygen`, then `pack` a model into a bundle; anyone can `verify` it
/// against the publisher's public key, with no network.
///
/// Isolated side: `init` a registry, `trust add` the publisher and approver keys, `import`
/// the bundle (it arrives quarantined), have a second person `approve` it, then `tag` it
/// (e.g. prod). Every action and refusal is in the tamper-evident audit log (`audit verify`).
#[derive(Debug, Parser)]
#[command(name = "airlock", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// Registry data directory [default: $XDG_DATA_HOME/airlock or ~/.local/share/airlock].
    #[arg(long, global = true, env = "AIRLOCK_DATA", value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Run without the kernel sandbox (network seal and file fence), for debugging only; the
    /// choice is recorded in the audit log.
    #[arg(long, global = true)]
    pub(crate) dangerous_no_sandbox: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an ECDSA P-256 signing key pair (NAME.key, NAME.pub) and print its key id.
    Keygen(KeygenArgs),
    /// Pack a model directory or GGUF file into a signed, reproducible bundle.
    Pack(Box<PackArgs>),
    /// Add a co-signature to a bundle (its digest does not change).
    Sign(SignArgs),
    /// Verify a bundle: signatures, exact file set, every chunk hash.
    Verify(VerifyArgs),
    /// Show a bundle's name, version, digest, signers, model facts and files.
    Inspect(InspectArgs),
    /// Cut a bundle into volumes for removable media (verify and import read them directly).
    Split(SplitArgs),
    /// Join a directory of volumes back into the bundle tar.
    Join(JoinArgs),
    /// Send or receive a bundle through a one-way UDP link (data diode) with RaptorQ repair.
    #[command(subcommand)]
    Diode(DiodeCommand),
    /// Create a registry data directory: policy.toml template, database, audit log and key.
    Init(JsonArgs),
    /// Verify a bundle against the trust policy and add it to the registry, quarantined.
    Import(ImportArgs),
    /// Approve a quarantined version with an approver key (not one that signed it).
    Approve(ApproveArgs),
    /// Reject a version, with a reason.
    Reject(RejectArgs),
    /// Point a tag (e.g. prod) at an approved version.
    Tag(TagArgs),
    /// Remove a tag.
    Untag(UntagArgs),
    /// List every version with its state and tags.
    Ls(JsonArgs),
    /// Show one version: state, digest, signers, approvals, tags, files.
    Show(RefArgs),
    /// Remove a version that no tag points at (its blobs go at the next gc).
    Rm(RefArgs),
    /// Delete blobs no version uses and staging left by interrupted imports.
    Gc(JsonArgs),
    /// Check the registry: database, blobs (rehashed), signatures, approvals, audit log.
    Fsck(FsckArgs),
    /// Write an approved version's files to a new directory, read-only, for another engine.
    Export(ExportArgs),
    /// Let an older version be imported despite rollback protection, until an expiry.
    AllowDowngrade(AllowDowngradeArgs),
    /// Report the kernel confinement this machine gives airlock, and prove the seal holds.
    ///
    /// Confines itself as every isolated-side command does, then reports: the network seal
    /// (seccomp) and file fence (Landlock) in force and why any piece is missing, no_new_privs,
    /// the machine's listening TCP addresses, the offline switches engine processes get, and
    /// whether the data directory, keys and audit log are readable by their owner only. It
    /// then tries to connect out and expects the kernel to refuse. The report is an audit entry.
    /// Exit 1 if the seal did not hold or a check failed.
    Doctor(JsonArgs),
    /// Manage trusted publisher and approver keys in policy.toml (each change is audited).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Inspect and prove the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// What left the machine and what was refused, from the audit log.
    ///
    /// Every connection the egress allow-list (`[egress]` in policy.toml) let through is an
    /// `egress.allowed` entry; every attempt the kernel refused, an `egress.refused` entry
    /// (a flood is summarised with its count).
    #[command(subcommand)]
    Egress(EgressCommand),
    /// Ask an approved chat model (GGUF) and stream its answer to stdout.
    ///
    /// The version's files are re-hashed against the registry before loading; the prompt is
    /// rendered with the model's own chat template. Greedy (temperature 0) by default, so the
    /// same question gets the same answer.
    Run(Box<RunArgs>),
    /// Run a model's eval suites and sign the result record.
    ///
    /// TARGET is a registry version (NAME:VERSION, NAME:TAG; approved or quarantined, its
    /// files re-hashed first) or a bundle file. Every item of the bundle's `evals/*.jsonl`
    /// runs greedily, in order; each item's result is kept. With --key the record is signed,
    /// and for a registry version stored, where `airlock approve` and `airlock tag` read it
    /// when policy.toml's [evals] asks for a fresh record.
    Eval(Box<EvalArgs>),
    /// Quantise a bundle into a signed, labelled derived bundle compared with its parent.
    ///
    /// The derived bundle names the parent's digest and the quantisation, carries the parent's
    /// eval suites, and records the comparison: per-suite scores, per-item agreement, the
    /// items that regressed, and the KL divergence of next-token distributions on the suites'
    /// prompts. With --gate, nothing is signed when a threshold is crossed.
    Quantize(Box<QuantizeArgs>),
    /// Embed texts with an approved embedding model (safetensors, sentence-transformers).
    Embed(EmbedArgs),
    /// Serve approved models over OpenAI- and Anthropic-compatible HTTP APIs.
    ///
    /// Every configured model is re-verified before the server starts (approved, blobs
    /// unchanged); if one fails, nothing is served and the refusal is audited. Every API request
    /// needs a key (`airlock keys create`) or an OIDC token, and is written to the audit log.
    /// Settings come from airlock.toml, then AIRLOCK_* variables, then flags.
    ///
    /// SIGHUP (or `POST /admin/reload` with an admin key) re-admits the configured models the
    /// same way, without a restart: moving a tag to a newly approved version and reloading
    /// deploys it; if any model fails the checks, nothing changes and the old set keeps serving.
    /// A reload re-reads the registry, not the configuration: other changes take a restart.
    ///
    /// Example: airlock serve --model chat=smollm2:prod --model embed=all-minilm-l6-v2:prod
    Serve(ServeArgs),
    /// Create, list and revoke API keys for `airlock serve` (each change is audited).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a server configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create and inspect knowledge collections: internal documents for retrieval.
    ///
    /// A collection pins an approved embedding model by digest and holds documents, each
    /// with a data class (public < internal < confidential < secret unless created with
    /// --classes). Example:
    ///
    ///   airlock collection create policies --embed all-minilm-l6-v2:prod --default-class internal
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Ingest documents into a collection: files, directory trees, git repositories (the
    /// tracked files at one commit), Jira and Confluence JSON exports.
    ///
    /// Reads text, Markdown, HTML, PDF and DOCX. Each document gets a class: from the first
    /// matching rule of --rules, else --class, else the collection's default. Unchanged
    /// documents cost a hash; a changed one replaces all its chunks; everything an ingest
    /// changes becomes visible at once when it ends, so an interrupted ingest leaves the
    /// collection as it was (and the next one reuses what it embedded). Parsers run in a
    /// separate process with limits: a hostile file fails alone.
    ///
    /// Example: airlock ingest policies ./handbook ./exports/jira.json --rules rules.toml --prune
    Ingest(IngestArgs),
    /// Search a collection by meaning and keywords at a clearance: chunks above it never
    /// reach the ranking.
    ///
    /// Example: airlock search policies "how many days of leave" --clearance internal -k 5
    Search(SearchArgs),
    /// Ask a question of your documents: retrieve at a clearance, answer with an approved
    /// chat model from the chunks found, and list the sources the answer cites.
    ///
    /// Citations are checked: a marker [n] counts only if source n was in the prompt, and a
    /// sentence that repeats a run of a source's words is attributed to it. Either name a
    /// collection and the model, or a model of a server configuration that has `rag`.
    ///
    /// Examples:
    ///   airlock ask policies "how many days of leave?" --model smollm2:prod --clearance internal
    ///   airlock ask handbook "how many days of leave?" --config airlock.toml
    Ask(AskArgs),
    /// Parses documents for `airlock ingest`, one request per line on stdin (internal).
    #[command(hide = true)]
    ParseWorker,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CollectionCommand {
    /// Create a collection pinned to an approved embedding model.
    Create(CollectionCreateArgs),
    /// List collections.
    Ls(JsonArgs),
    /// Show a collection: documents, chunks per class, embedding model, size.
    Show(CollectionShowArgs),
    /// Remove one document (by its id, as `show --documents` lists it).
    RmDoc(CollectionRmDocArgs),
    /// Re-embed every chunk with another approved embedding model: a complete rebuild.
    Rebuild(CollectionRebuildArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CollectionCreateArgs {
    /// Its name: 1-64 lowercase letters, digits, '-' or '_'.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// The approved embedding model (NAME:TAG, NAME:VERSION or NAME@sha256:HEX); the
    /// collection is pinned to the digest it resolves to now.
    #[arg(long, value_name = "REF")]
    pub(crate) embed: String,
    /// The class of documents nothing else classifies [default: the lowest class].
    #[arg(long, value_name = "CLASS")]
    pub(crate) default_class: Option<String>,
    /// The classes, least sensitive first [default: public,internal,confidential,secret].
    #[arg(long, value_delimiter = ',', value_name = "CLASS,...")]
    pub(crate) classes: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CollectionShowArgs {
    /// The collection.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// List every document too (id, class, chunks, version).
    #[arg(long)]
    pub(crate) documents: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CollectionRmDocArgs {
    /// The collection.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// The document's id.
    #[arg(value_name = "DOC")]
    pub(crate) document: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CollectionRebuildArgs {
    /// The collection.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// The approved embedding model to pin to from now on.
    #[arg(long, value_name = "REF")]
    pub(crate) embed: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The collection.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// Files, directories, git repositories or export files.
    #[arg(value_name = "PATH", required = true)]
    pub(crate) paths: Vec<PathBuf>,
    /// The class of documents no rule classifies [default: the collection's default].
    #[arg(long, value_name = "CLASS")]
    pub(crate) class: Option<String>,
    /// Rules file mapping path globs and export fields to classes and access groups.
    #[arg(long, value_name = "FILE")]
    pub(crate) rules: Option<PathBuf>,
    /// Remove documents of these paths that are no longer there.
    #[arg(long)]
    pub(crate) prune: bool,
    /// The revision of git repositories among the paths [default: HEAD].
    #[arg(long, value_name = "REV")]
    pub(crate) rev: Option<String>,
    /// CPU threads for embedding [default: all cores].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// The collection.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// What to look for.
    #[arg(value_name = "QUERY")]
    pub(crate) query: String,
    /// The most sensitive class the results may have [default: the collection's lowest].
    #[arg(long, value_name = "CLASS")]
    pub(crate) clearance: Option<String>,
    /// Access groups of the caller (documents limited to groups need one of them).
    #[arg(long, value_delimiter = ',', value_name = "GROUP,...")]
    pub(crate) groups: Vec<String>,
    /// Results.
    #[arg(short, default_value_t = 5, value_name = "N")]
    pub(crate) k: usize,
    /// Weight of the dense (meaning) ranking in the fusion.
    #[arg(long, default_value_t = 1.0, value_name = "W")]
    pub(crate) dense_weight: f32,
    /// Weight of the keyword (BM25) ranking in the fusion.
    #[arg(long, default_value_t = 0.3, value_name = "W")]
    pub(crate) keyword_weight: f32,
    /// Print {"results": [...]} as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AskArgs {
    /// A collection (with --model), or a model alias of --config that has `rag`.
    #[arg(value_name = "COLLECTION|MODEL")]
    pub(crate) target: String,
    /// The question.
    #[arg(value_name = "QUESTION")]
    pub(crate) question: String,
    /// The approved chat model that answers (NAME:TAG, NAME:VERSION or NAME@sha256:HEX).
    #[arg(long, value_name = "REF", conflicts_with = "config")]
    pub(crate) model: Option<String>,
    /// A server configuration whose model TARGET names its collections and limits.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The most sensitive class a source may have [default: each collection's lowest].
    #[arg(long, value_name = "CLASS")]
    pub(crate) clearance: Option<String>,
    /// Access groups of the caller (documents limited to groups need one of them).
    #[arg(long, value_delimiter = ',', value_name = "GROUP,...")]
    pub(crate) groups: Vec<String>,
    /// Chunks retrieved [default: the model's top_k, else 5].
    #[arg(short, value_name = "N")]
    pub(crate) k: Option<usize>,
    /// Tokens the sources may take in the prompt [default: the model's, else 1500].
    #[arg(long, value_name = "N")]
    pub(crate) max_context_tokens: Option<usize>,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub(crate) max_tokens: usize,
    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Print {"answer", "citations", "unresolved_citations", "sources"} as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeConfigArgs {
    /// Configuration file (TOML) [default: none; flags and environment only].
    #[arg(long, env = "AIRLOCK_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "AIRLOCK_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// Serve REF under ALIAS (repeatable; replaces the file's model of that alias).
    #[arg(
        long = "model",
        env = "AIRLOCK_MODELS",
        value_delimiter = ',',
        value_name = "ALIAS=REF"
    )]
    pub(crate) models: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ServeConfigArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and the OIDC JWKS; exit 2 with
    /// the reason if anything is wrong.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    #[command(flatten)]
    pub(crate) config: ServeConfigArgs,
    /// Print the resolved configuration as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; it is printed once and only its SHA-256 is stored.
    Create(KeysCreateArgs),
    /// List keys (never their secrets).
    Ls(JsonArgs),
    /// Revoke a key by id, unique id prefix, or name; the server refuses it at once.
    Revoke(KeysRevokeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct KeysCreateArgs {
    /// Who or what uses the key (e.g. wiki-bot).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// user: the model APIs; admin: also /metrics and /admin/status.
    #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
    pub(crate) role: String,
    /// Highest data class the holder may read (e.g. public, internal, confidential, secret).
    #[arg(long, default_value = "public", value_name = "LEVEL")]
    pub(crate) clearance: String,
    /// Lifetime, e.g. 30d, 12h [default: no expiry].
    #[arg(long, value_name = "DURATION")]
    pub(crate) expires: Option<humantime::Duration>,
    /// Print the key and its details as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeysRevokeArgs {
    /// Key id, unique id prefix (4+ hex digits), or name.
    #[arg(value_name = "KEY")]
    pub(crate) key: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// NAME:VERSION or NAME:TAG in the registry, or a bundle file.
    #[arg(value_name = "TARGET")]
    pub(crate) target: String,
    /// Run only this suite (repeatable); default: every suite in the bundle.
    #[arg(long = "suite", value_name = "NAME")]
    pub(crate) suites: Vec<String>,
    /// Sign the record with this key (an approver's, for the isolated side's gates).
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Also write the record (signed envelope with --key, plain JSON without) here.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// CPU threads (default: all).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Print the record as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct QuantizeArgs {
    /// The parent bundle (a .airlock file or directory) holding one GGUF model.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// The quantisation: Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1,
    /// Q4_0, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K, F16 or BF16.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) kind: String,
    /// Publisher key that signs the derived bundle.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// Where the derived bundle is written.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: PathBuf,
    /// Name of the derived bundle (default: the parent's name and the type, e.g.
    /// smollm2-q4_k_m).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Version of the derived bundle (default: the parent's).
    #[arg(long)]
    pub(crate) version: Option<String>,
    /// Refuse to sign when the derived model regresses: by default any item that passed on
    /// the parent and fails now.
    #[arg(long)]
    pub(crate) gate: bool,
    /// Gate thresholds (TOML `[gate]`: max_regressed_items, max_score_drop, min_agreement,
    /// max_mean_kld, and per-suite `[gate.suites.NAME]`); implies --gate.
    #[arg(long, value_name = "FILE")]
    pub(crate) gate_policy: Option<PathBuf>,
    /// CPU threads (default: all).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// NAME:TAG, NAME:VERSION or NAME@sha256:HEX of an approved chat model.
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// The user's message.
    #[arg(value_name = "PROMPT")]
    pub(crate) prompt: String,
    /// A system message before it.
    #[arg(long, value_name = "TEXT")]
    pub(crate) system: Option<String>,
    /// Send PROMPT as plain text, without the chat template.
    #[arg(long, conflicts_with = "system")]
    pub(crate) raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub(crate) max_tokens: usize,
    /// Sampling temperature, 0 to 2 (0: always the most likely token).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub(crate) temperature: f32,
    /// Nucleus sampling: keep the likeliest tokens up to this total probability.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub(crate) top_p: f32,
    /// Keep only the K likeliest tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub(crate) top_k: u32,
    /// Drop tokens less likely than this fraction of the likeliest.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub(crate) min_p: f32,
    /// Penalty for repeating any of the last 64 tokens (1: none).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub(crate) repeat_penalty: f32,
    /// Seed for sampling: the same seed gives the same answer [default: random].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u32>,
    /// Stop when this text appears (repeatable; the text is not printed).
    #[arg(long, value_name = "TEXT")]
    pub(crate) stop: Vec<String>,
    /// Context window in tokens [default: the model's, at most 4096].
    #[arg(long, value_name = "N")]
    pub(crate) context: Option<usize>,
    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Print one JSON object (text, token ids, finish reason, usage) instead of streaming.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EmbedArgs {
    /// NAME:TAG, NAME:VERSION or NAME@sha256:HEX of an approved embedding model.
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// Texts to embed.
    #[arg(value_name = "TEXT", required = true)]
    pub(crate) texts: Vec<String>,
    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Print one JSON object with the full vectors (model, digest, dimension, vectors, tokens)
    /// instead of a summary with the cosine similarity of every pair.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SplitArgs {
    /// The bundle (.airlock tar).
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Largest volume, header included: bytes, or with K/M/G/T (powers of 1024), KB/MB/GB/TB
    /// (powers of 1000).
    #[arg(long, value_name = "SIZE")]
    pub(crate) size: String,
    /// Directory for the volumes (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// Directory holding the volumes (any order, any other files ignored).
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// The bundle file to write.
    #[arg(short, long, value_name = "BUNDLE")]
    pub(crate) out: PathBuf,
}

/// One-way transfer: no acknowledgement, no resend; loss is repaired by RaptorQ (RFC 6330)
/// repair symbols and by repeating the stream (carousel passes).
#[derive(Debug, Subcommand)]
pub(crate) enum DiodeCommand {
    /// Send a bundle: paced, RaptorQ-coded datagrams, manifest first, pass after pass.
    ///
    /// Example: airlock diode send smollm2_1.0.0.airlock --to 10.0.0.2:7700 --rate 800M --passes 3
    Send(DiodeSendArgs),
    /// Receive one bundle, write blocks as they decode, verify it, then name it.
    ///
    /// Decoded blocks are kept in OUT/.airlock-diode across restarts, so a receiver started
    /// again (or started mid-stream) finishes without starting over. The bundle appears as
    /// OUT/NAME_VERSION.airlock only after full verification; a session that fails or stalls
    /// leaves OUT/NAME_VERSION.airlock.report.json instead.
    Receive(DiodeReceiveArgs),
    /// A lossy UDP link for tests and drills: drop, burst-drop, duplicate, reorder, corrupt.
    ///
    /// Forwards from --listen to --to and stops by itself (datagram count, time, or idle).
    Relay(DiodeRelayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DiodeSendArgs {
    /// The bundle (.airlock tar).
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// The diode's input (or the receiver), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) to: String,
    /// Link rate in bits per second, IP and UDP headers included: 800M, 1G, 9.5G, or `max`.
    #[arg(long, default_value = "800M", value_name = "RATE")]
    pub(crate) rate: String,
    /// Repair symbols per pass, as a share of the data: 5%, 20%, 0.1.
    #[arg(long, default_value = "5%", value_name = "PERCENT")]
    pub(crate) overhead: String,
    /// Carousel passes; each pass resends the data with new repair symbols.
    #[arg(long, default_value_t = 1, conflicts_with = "forever")]
    pub(crate) passes: u32,
    /// Repeat passes until stopped (Ctrl-C).
    #[arg(long)]
    pub(crate) forever: bool,
    /// Link MTU in bytes (largest IP packet); sets the datagram size.
    #[arg(long, default_value_t = 1500)]
    pub(crate) mtu: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiodeReceiveArgs {
    /// Address and port to listen on, e.g. 0.0.0.0:7700.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: std::net::SocketAddr,
    /// Directory for received bundles (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Refuse sessions announcing a larger bundle (K/M/G/T or KB/MB/GB/TB).
    #[arg(long, default_value = "1T", value_name = "SIZE")]
    pub(crate) max_size: String,
    /// Require the bundle to be signed by these keys; checked on the announce, before
    /// anything is written, and again at the end. Without it, integrity only.
    #[arg(long = "trust", value_name = "PUB.pem", num_args = 1..)]
    pub(crate) trust: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, default_value_t = 1, requires = "trust")]
    pub(crate) threshold: usize,
    /// Give up (keeping decoded blocks) after this long without a useful datagram.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub(crate) idle_timeout: humantime::Duration,
    /// Keep receiving bundle after bundle instead of exiting after the first.
    #[arg(long)]
    pub(crate) forever: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiodeRelayArgs {
    /// Address to listen on (port 0 picks one; it is printed on stderr).
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: std::net::SocketAddr,
    /// Where to forward.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) to: std::net::SocketAddr,
    /// Send forwarded datagrams from this address (for receivers that accept data only from
    /// the sender's port, such as udpcast's); default: any free port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) from: Option<std::net::SocketAddr>,
    /// Random loss: 1%, 0.01.
    #[arg(long, default_value = "0%", value_name = "PERCENT")]
    pub(crate) loss: String,
    /// Drop --burst-len consecutive datagrams starting at this datagram (0-based).
    #[arg(long, value_name = "N", requires = "burst_len")]
    pub(crate) burst_at: Option<u64>,
    /// Length of the burst.
    #[arg(long, value_name = "N", requires = "burst_at")]
    pub(crate) burst_len: Option<u64>,
    /// Duplicate this share of datagrams.
    #[arg(long, default_value = "0%", value_name = "PERCENT")]
    pub(crate) duplicate: String,
    /// Deliver this share of datagrams late, overtaken by up to --reorder-depth others.
    #[arg(long, default_value = "0%", value_name = "PERCENT")]
    pub(crate) reorder: String,
    /// Most datagrams a late one is overtaken by.
    #[arg(long, default_value_t = 32)]
    pub(crate) reorder_depth: usize,
    /// Flip 1 to 4 random bits in this share of datagrams.
    #[arg(long, default_value = "0%", value_name = "PERCENT")]
    pub(crate) corrupt: String,
    /// Seed of the random choices (the same seed replays the same faults).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Stop after this many datagrams in.
    #[arg(long, default_value_t = 50_000_000)]
    pub(crate) max_datagrams: u64,
    /// Stop after this long.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub(crate) max_time: humantime::Duration,
    /// Stop after this long without a datagram, once traffic has started.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub(crate) idle: humantime::Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Bundle file (.airlock), unpacked bundle directory, or directory of volumes.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Print the result as JSON (also on failure).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    pub(crate) reference: String,
    /// The approver's private key (PKCS#8 PEM); its public key must be a trusted approver.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RejectArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    pub(crate) reference: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub(crate) reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct TagArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    pub(crate) reference: String,
    /// The tag, e.g. prod.
    pub(crate) tag: String,
}

#[derive(Debug, Args)]
pub(crate) struct UntagArgs {
    /// The tag to remove, NAME:TAG.
    #[arg(value_name = "NAME:TAG")]
    pub(crate) reference: String,
}

#[derive(Debug, Args)]
pub(crate) struct RefArgs {
    /// NAME:VERSION, NAME:TAG or NAME@sha256:HEX.
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FsckArgs {
    /// Check sizes and permissions only; do not rehash blobs.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// NAME:VERSION, NAME:TAG or NAME@sha256:HEX (must be approved).
    #[arg(value_name = "REF")]
    pub(crate) reference: String,
    /// Directory to create.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct AllowDowngradeArgs {
    /// The older version to allow, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    pub(crate) reference: String,
    /// The approver's private key.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// When the exception lapses: an RFC 3339 time or a duration such as 24h or 7days.
    #[arg(long, value_name = "WHEN")]
    pub(crate) expires: String,
    /// Why (recorded in the signed exception and the audit log).
    #[arg(long)]
    pub(crate) reason: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust a public key as a publisher (signs bundles) or approver (approves imports).
    Add(TrustAddArgs),
    /// List trusted keys.
    Ls(JsonArgs),
    /// Stop trusting a key (id or a unique prefix of at least 8 hex digits).
    Rm(TrustRmArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TrustAddArgs {
    /// The public key (SPKI PEM).
    #[arg(value_name = "PUB.pem")]
    pub(crate) key: PathBuf,
    /// Trust it to sign bundles.
    #[arg(
        long,
        conflicts_with = "approver",
        required_unless_present = "approver"
    )]
    pub(crate) publisher: bool,
    /// Trust it to approve imported versions.
    #[arg(long)]
    pub(crate) approver: bool,
    /// A label to show with it (a person or team).
    #[arg(long)]
    pub(crate) label: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TrustRmArgs {
    /// Key id (or unique prefix).
    #[arg(value_name = "KEYID")]
    pub(crate) id: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the whole log: every entry, every signed checkpoint, nothing cut off.
    Verify(AuditVerifyArgs),
    /// Print the last entries.
    Tail(AuditTailArgs),
    /// Prove that entry N is in the log (RFC 6962 inclusion proof).
    Prove(AuditProveArgs),
    /// Prove that the log at size NEW extends the log at size OLD (consistency proof).
    Consistency(AuditConsistencyArgs),
    /// Print the latest signed checkpoint, for an auditor to keep as a witness.
    Checkpoint,
    /// Set aside a torn or unsealed end left by a crash (recorded as an audit entry).
    Repair(JsonArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum EgressCommand {
    /// Each allowed connection and refused attempt, when, to where, by what, and why; then
    /// each destination with its counts and when it was first and last seen.
    Log(EgressLogArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EgressLogArgs {
    /// Only entries from this time on: a time (2026-12-01T00:00:00Z) or how long ago (24h,
    /// 7d).
    #[arg(long, value_name = "WHEN")]
    pub(crate) since: Option<String>,
    /// One JSON object per entry, then none for the destinations.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// A checkpoint kept earlier (`airlock audit checkpoint`): the log must still extend it.
    #[arg(long, value_name = "FILE")]
    pub(crate) witness: Option<PathBuf>,
    /// Verifier key string or file [default: DATA/audit.pub].
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditTailArgs {
    /// How many entries.
    #[arg(short = 'n', default_value_t = 10)]
    pub(crate) count: usize,
    /// Print JSON lines (the entries exactly as logged).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AuditProveArgs {
    /// Entry index (from 0).
    pub(crate) index: u64,
    /// Tree size to prove against [default: the latest checkpoint].
    #[arg(long)]
    pub(crate) size: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditConsistencyArgs {
    /// The earlier tree size.
    pub(crate) old: u64,
    /// The later tree size.
    pub(crate) new: u64,
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Directory to write the key pair into (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "airlock")]
    pub(crate) name: String,
    /// Encrypt the private key with a passphrase (from AIRLOCK_KEY_PASSPHRASE, else prompted).
    #[arg(long)]
    pub(crate) encrypt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// A Hugging Face-style model directory (safetensors, tokenizer.json, config.json, ...)
    /// or a single .gguf file.
    #[arg(value_name = "SRC")]
    pub(crate) src: PathBuf,
    /// Bundle name (lower-case letters, digits, '.', '_', '-').
    #[arg(long)]
    pub(crate) name: String,
    /// Semantic version, X.Y.Z.
    #[arg(long = "version", id = "bundle_version", value_name = "X.Y.Z")]
    pub(crate) version: String,
    /// Signing key (PKCS#8 PEM). The first is the publisher; repeat to co-sign.
    #[arg(long = "key", value_name = "KEY", required = true)]
    pub(crate) keys: Vec<PathBuf>,
    /// SPDX licence expression, e.g. Apache-2.0.
    #[arg(long)]
    pub(crate) license: Option<String>,
    /// Model kind; guessed from the files when omitted.
    #[arg(long, value_parser = ["llm", "embedding"])]
    pub(crate) kind: Option<String>,
    /// Where the model came from (URL, package, path).
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// Source revision (commit or tag).
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Model card (Markdown); becomes MODEL_CARD.md. Default: SRC/README.md.
    #[arg(long, value_name = "MODEL_CARD.md")]
    pub(crate) card: Option<PathBuf>,
    /// Directory of eval suites (*.jsonl: reference prompts, regression cases), carried and signed.
    #[arg(long, value_name = "DIR")]
    pub(crate) evals: Option<PathBuf>,
    /// Run the --evals suites on the model before packing and record each suite's score and
    /// failed items in the signed predicate (GGUF chat models).
    #[arg(long, requires = "evals")]
    pub(crate) run_evals: bool,
    /// CPU threads for --run-evals (default: all).
    #[arg(long, requires = "run_evals")]
    pub(crate) threads: Option<usize>,
    /// Digest of the bundle this one derives from (e.g. before quantisation).
    #[arg(long, value_name = "sha256:HEX")]
    pub(crate) parent: Option<String>,
    /// Output bundle file. Default: NAME_VERSION.airlock.
    #[arg(short, long, value_name = "OUT.airlock")]
    pub(crate) out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Bundle file or unpacked bundle directory.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// The co-signer's private key.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Bundle file (.airlock), unpacked bundle directory, or directory of volumes.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Trusted public key (SPKI PEM); repeat for several.
    #[arg(long = "trust", value_name = "PUB.pem", required = true, num_args = 1..)]
    pub(crate) trust: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, default_value_t = 1)]
    pub(crate) threshold: usize,
    /// Print the result as JSON (also on failure).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// Bundle file (.airlock) or unpacked bundle directory.
    #[arg(value_name = "BUNDLE")]
    pub(crate) bundle: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
