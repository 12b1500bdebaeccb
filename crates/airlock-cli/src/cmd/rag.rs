//! `airlock collection`, `airlock ingest` and `airlock search`: knowledge collections on the
//! approved embedding model each is pinned to.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use airlock_audit::{Entry, Outcome};
use airlock_engine::embed::EmbeddingConfig;
use airlock_engine::{EmbeddingEngine, EmbeddingModel, ModelFiles};
use airlock_rag::parse::worker::Parser;
use airlock_rag::{Classes, Clearance, Collection, EmbeddingPin, IngestOptions, Progress, Weights};
use airlock_registry::{Reference, Registry, replay};
use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::open_registry;
use crate::cli::{CollectionCommand, IngestArgs, SearchArgs};
use crate::output;

/// An approved embedding model, loaded, and its pin.
pub(super) struct Loaded {
    pub(super) engine: EmbeddingEngine,
    pin: EmbeddingPin,
}

/// Opens `reference` as an approved embedding model (its blobs re-hashed) and loads it.
fn load_embedding(
    registry: &Registry,
    reference: &str,
    threads: Option<usize>,
    purpose: &str,
) -> anyhow::Result<Loaded> {
    let parsed = Reference::parse(reference)?;
    let approved = registry.open_approved(&parsed, purpose)?;
    if approved.kind != "embedding" {
        bail!(
            "{}:{} is not an embedding model",
            approved.name,
            approved.version
        );
    }
    let mut config = EmbeddingConfig::default();
    if let Some(threads) = threads {
        config.threads = threads;
    }
    let files = ModelFiles::new(
        format!("{}:{}", approved.name, approved.version),
        approved.files.clone(),
    );
    let model = EmbeddingModel::load(&files, &config)?;
    let dimension = model.info().dimension;
    let engine = EmbeddingEngine::start(model, 64, config.max_batch)?;
    Ok(Loaded {
        engine,
        pin: EmbeddingPin {
            reference: reference.to_owned(),
            digest: approved.digest,
            dimension,
        },
    })
}

/// Loads the model a collection is pinned to: its name at the pinned digest.
pub(super) fn pinned_model(
    registry: &Registry,
    collection: &Collection,
    threads: Option<usize>,
    purpose: &str,
) -> anyhow::Result<Loaded> {
    let pin = collection.pin();
    let name = pin
        .reference
        .split([':', '@'])
        .next()
        .unwrap_or(&pin.reference);
    let loaded = load_embedding(
        registry,
        &format!("{name}@{}", pin.digest),
        threads,
        purpose,
    )
    .with_context(|| {
        format!(
            "collection {} is pinned to {} ({})",
            collection.name(),
            pin.reference,
            pin.digest
        )
    })?;
    collection.check_model(&loaded.pin.digest)?;
    Ok(loaded)
}

pub(crate) fn collection(command: CollectionCommand, data: &Path) -> anyhow::Result<ExitCode> {
    match command {
        CollectionCommand::Create(args) => {
            let registry = open_registry(data)?;
            let classes = if args.classes.is_empty() {
                Classes::default()
            } else {
                Classes::new(args.classes.clone())?
            };
            let default_class = args
                .default_class
                .clone()
                .unwrap_or_else(|| classes.lowest().to_owned());
            let loaded = load_embedding(&registry, &args.embed, None, "collection")?;
            let info = Collection::create(data, &args.name, &loaded.pin, &classes, &default_class)?;
            registry.audit_log().append(
                Entry::new(registry.actor(), "collection.create", Outcome::Ok)
                    .subject(format!("collection:{}", args.name))
                    .detail("embedding", loaded.pin.digest.clone())
                    .detail("classes", classes.names().join(","))
                    .detail("default_class", default_class.clone()),
            )?;
            if args.json {
                output::json(&serde_json::to_value(&info)?)?;
            } else {
                output::out(&format!(
                    "created collection {}: embedding {} ({}, {} dimensions), classes {}, default {}\n",
                    info.name,
                    info.embedding.reference,
                    info.embedding.digest,
                    info.embedding.dimension,
                    info.classes.join(" < "),
                    info.default_class
                ))?;
            }
        }
        CollectionCommand::Ls(args) => {
            let mut all = Vec::new();
            for name in Collection::names(data)? {
                all.push(Collection::open(data, &name)?.info()?);
            }
            if args.json {
                output::json(&json!({ "collections": all }))?;
            } else if all.is_empty() {
                output::out("no collections\n")?;
            } else {
                for info in all {
                    output::out(&format!(
                        "{:<24} {:>6} documents {:>8} chunks  {}\n",
                        info.name, info.documents, info.chunks, info.embedding.reference
                    ))?;
                }
            }
        }
        CollectionCommand::Show(args) => {
            let collection = Collection::open(data, &args.name)?;
            let info = collection.info()?;
            let documents = if args.documents {
                collection.documents()?
            } else {
                Vec::new()
            };
            if args.json {
                let mut value = serde_json::to_value(&info)?;
                if args.documents {
                    value["document_list"] = documents
                        .iter()
                        .map(|d| json!({"id": d.id, "kind": d.kind, "class": d.class, "groups": d.groups,
                            "chunks": d.chunks, "version": d.version, "title": d.title, "commit": d.commit}))
                        .collect();
                }
                output::json(&value)?;
            } else {
                let by_class: Vec<String> = info
                    .chunks_by_class
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                let mut text = format!(
                    "collection {}\n  embedding   {} ({}, {} dimensions)\n  classes     {} (default {})\n  documents   {}\n  chunks      {} ({})\n  generation  {}\n  size        {} bytes\n",
                    info.name,
                    info.embedding.reference,
                    info.embedding.digest,
                    info.embedding.dimension,
                    info.classes.join(" < "),
                    info.default_class,
                    info.documents,
                    info.chunks,
                    if by_class.is_empty() {
                        "none".into()
                    } else {
                        by_class.join(", ")
                    },
                    info.generation,
                    info.bytes,
                );
                if info.pending_chunks > 0 {
                    text.push_str(&format!(
                        "  pending     {} chunks prepared by an unfinished ingest (the next one uses them)\n",
                        info.pending_chunks
                    ));
                }
                for d in documents {
                    text.push_str(&format!(
                        "  {} [{}] {} chunks {}\n",
                        d.id, d.class, d.chunks, d.kind
                    ));
                }
                output::out(&text)?;
            }
        }
        CollectionCommand::RmDoc(args) => {
            let registry = open_registry(data)?;
            let mut collection = Collection::open_writer(data, &args.name)?;
            let generation = collection.remove_document(&args.document)?;
            registry.audit_log().append(
                Entry::new(registry.actor(), "collection.rm_doc", Outcome::Ok)
                    .subject(format!("collection:{}", args.name))
                    .detail("document", args.document.clone())
                    .detail("generation", generation),
            )?;
            if args.json {
                output::json(&json!({"removed": args.document, "generation": generation}))?;
            } else {
                output::out(&format!("removed {} from {}\n", args.document, args.name))?;
            }
        }
        CollectionCommand::Rebuild(args) => {
            let registry = open_registry(data)?;
            let mut collection = Collection::open_writer(data, &args.name)?;
            let previous = collection.pin().digest.clone();
            let loaded = load_embedding(&registry, &args.embed, None, "collection")?;
            let chunks = collection.rebuild(&loaded.engine, &loaded.pin)?;
            registry.audit_log().append(
                Entry::new(registry.actor(), "collection.rebuild", Outcome::Ok)
                    .subject(format!("collection:{}", args.name))
                    .detail("embedding", loaded.pin.digest.clone())
                    .detail("previous", previous)
                    .detail("chunks", chunks),
            )?;
            if args.json {
                output::json(
                    &json!({"rebuilt": args.name, "chunks": chunks, "embedding": loaded.pin}),
                )?;
            } else {
                output::out(&format!(
                    "re-embedded {chunks} chunks of {} with {} ({})\n",
                    args.name, loaded.pin.reference, loaded.pin.digest
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ingest(args: IngestArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let registry = open_registry(data)?;
    let mut collection = Collection::open_writer(data, &args.name)?;
    let loaded = pinned_model(&registry, &collection, args.threads, "ingest")?;
    let program =
        std::env::current_exe().context("cannot find the airlock binary to run parsers in")?;
    let mut parser = Parser::isolated(program, vec!["parse-worker".into()]);
    let options = IngestOptions {
        class: args.class.clone(),
        rules: args.rules.clone(),
        prune: args.prune,
        rev: args.rev.clone(),
        ..IngestOptions::default()
    };
    let bar = files_bar();
    let outcome = collection.ingest(
        &args.paths,
        &options,
        &mut parser,
        &loaded.engine,
        &loaded.pin.digest,
        &mut |Progress::Files { done, total }| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let mut entry = Entry::new(registry.actor(), "collection.ingest", Outcome::Ok)
        .subject(format!("collection:{}", args.name))
        .detail(
            "paths",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            registry.audit_log().append(
                Entry::new(registry.actor(), "collection.ingest", Outcome::Failed)
                    .subject(format!("collection:{}", args.name))
                    .reason(e.to_string()),
            )?;
            return Err(e.into());
        }
    };
    entry = entry
        .detail("added", report.added.len())
        .detail("changed", report.changed.len())
        .detail("unchanged", report.unchanged)
        .detail("reclassified", report.reclassified.len())
        .detail("removed", report.removed.len())
        .detail("failed", report.failed.len())
        .detail("embedded_chunks", report.embedded_chunks)
        .detail("generation", report.generation);
    // The class and groups of every document this run published or reclassified, and of
    // every unchanged one whose class the log does not already state (an earlier run that
    // died before its entries, or one from before classes were recorded), so that each
    // document's class is derivable from the log.
    let logged = registry.log_state()?;
    let known = logged.collections.get(&args.name);
    let set: Vec<(String, String, Vec<String>)> = report
        .classes
        .iter()
        .filter(|(id, class, groups)| {
            known
                .and_then(|c| c.documents.get(id))
                .is_none_or(|d| d.class != *class || d.groups != *groups)
        })
        .cloned()
        .collect();
    let mut entries = vec![entry];
    entries.extend(replay::collection_classes_entries(
        registry.actor(),
        &args.name,
        &set,
        &report.removed,
    ));
    registry.audit_log().append_all(entries)?;
    if args.json {
        output::json(&serde_json::to_value(&report)?)?;
    } else {
        let mut text = format!(
            "{}: {} added, {} changed, {} unchanged, {} reclassified, {} removed; {} chunks embedded{} in {:.1} s (generation {})\n",
            args.name,
            report.added.len(),
            report.changed.len(),
            report.unchanged,
            report.reclassified.len(),
            report.removed.len(),
            report.embedded_chunks,
            if report.reused_chunks > 0 {
                format!(
                    ", {} reused from an interrupted ingest",
                    report.reused_chunks
                )
            } else {
                String::new()
            },
            report.seconds,
            report.generation,
        );
        if !report.skipped.is_empty() {
            text.push_str(&format!(
                "  skipped {} files of no readable type\n",
                report.skipped.len()
            ));
        }
        for (document, reason) in &report.failed {
            text.push_str(&format!("  failed: {document}: {reason}\n"));
        }
        output::out(&text)?;
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn files_bar() -> ProgressBar {
    let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("    ingest [{bar:40}] {pos}/{len} files eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Makes `collection`'s searches see only the documents whose class and groups the audit
/// log backs (as the server does).
pub(super) fn attest(registry: &Registry, collection: &mut Collection) -> anyhow::Result<()> {
    let state = registry.log_state()?;
    let attested =
        airlock_server::collections::attestation(&state, collection.name()).unwrap_or_default();
    collection.attest(Some(std::sync::Arc::new(attested)));
    Ok(())
}

pub(crate) fn search(args: SearchArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let registry = open_registry(data)?;
    let mut collection = Collection::open(data, &args.name)?;
    attest(&registry, &mut collection)?;
    let class = args
        .clearance
        .clone()
        .unwrap_or_else(|| collection.classes().lowest().to_owned());
    let clearance = Clearance::new(collection.classes(), &class, args.groups.clone())?;
    if args.k == 0 || args.k > 100 {
        bail!("-k is {}; it must be 1 to 100", args.k);
    }
    let loaded = pinned_model(&registry, &collection, None, "search")?;
    let vector = airlock_rag::block_on(Collection::embed_query(&loaded.engine, &args.query))?;
    let weights = Weights {
        dense: args.dense_weight,
        keyword: args.keyword_weight,
        ..Weights::default()
    };
    let hits = collection.search(&args.query, &vector, &clearance, args.k, &weights)?;
    let chunks: Vec<String> = hits
        .iter()
        .map(|h| format!("{}:{}", h.chunk.id, h.chunk.class))
        .collect();
    registry.audit_log().append(
        Entry::new(registry.actor(), "collection.search", Outcome::Ok)
            .subject(format!("collection:{}", args.name))
            .detail("clearance", class.clone())
            .detail("groups", args.groups.join(","))
            .detail(
                "query_sha256",
                hex::encode(Sha256::digest(args.query.as_bytes())),
            )
            .detail("chunks", chunks.join(" ")),
    )?;
    if args.json {
        output::json(&json!({"results": hits}))?;
    } else if hits.is_empty() {
        output::out(&format!("nothing found at clearance {class}\n"))?;
    } else {
        let mut text = String::new();
        for (n, hit) in hits.iter().enumerate() {
            let c = &hit.chunk;
            let heading = if c.heading.is_empty() {
                String::new()
            } else {
                format!(" > {}", c.heading)
            };
            let excerpt: String = c
                .text
                .chars()
                .take(240)
                .collect::<String>()
                .replace('\n', " ");
            text.push_str(&format!(
                "{}. [{}] {}{} ({}) score {:.4}\n   {}\n",
                n + 1,
                c.class,
                c.document,
                heading,
                c.location.describe(),
                hit.score,
                excerpt
            ));
        }
        output::out(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}
