//! `airlock ask`: a question answered from collections by an approved chat model, with the
//! sources it cites checked against the ones placed in its prompt.

use std::path::Path;
use std::process::ExitCode;

use airlock_audit::{Entry, Outcome};
use airlock_engine::{
    ChatConfig, ChatModel, Embedder as _, Event, GenerateParams, Message, Role, SamplingParams,
};
use airlock_rag::answer::{self, Checked, FenceKey, Grounding, Source};
use airlock_rag::{Clearance, Collection, Weights};
use airlock_server::config::{DEFAULT_RAG_CONTEXT_TOKENS, DEFAULT_RAG_TOP_K, RawConfig};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::open_registry;
use super::rag::pinned_model;
use super::run::{approved, files};
use crate::cli::AskArgs;
use crate::output;

/// What answers, from where.
struct Plan {
    model: String,
    collections: Vec<String>,
    top_k: usize,
    budget: usize,
}

fn plan(args: &AskArgs) -> anyhow::Result<Plan> {
    if let Some(path) = &args.config {
        let config = RawConfig::load(path)?.validate(Some(path))?;
        let spec = config
            .models
            .get(&args.target)
            .with_context(|| format!("{} has no model {:?}", path.display(), args.target))?;
        let rag = spec.rag.as_ref().with_context(|| {
            format!(
                "model {:?} of {} has no rag = {{ collections = [...] }}",
                args.target,
                path.display()
            )
        })?;
        return Ok(Plan {
            model: spec.reference.clone(),
            collections: rag.collections.clone(),
            top_k: args.k.unwrap_or(rag.top_k),
            budget: args.max_context_tokens.unwrap_or(rag.max_context_tokens),
        });
    }
    let model = args.model.clone().with_context(|| {
        format!(
            "name the chat model that answers from {}: --model REF (or --config FILE with a rag model)",
            args.target
        )
    })?;
    Ok(Plan {
        model,
        collections: vec![args.target.clone()],
        top_k: args.k.unwrap_or(DEFAULT_RAG_TOP_K),
        budget: args
            .max_context_tokens
            .unwrap_or(DEFAULT_RAG_CONTEXT_TOKENS),
    })
}

pub(crate) fn ask(args: AskArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    if !(1..=50).contains(&plan.top_k) {
        bail!("-k is {}; it must be 1 to 50", plan.top_k);
    }
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let registry = open_registry(data)?;
    // Retrieve first: a collection or clearance that is wrong fails before the model loads.
    let mut hits = Vec::new();
    let mut counter = None;
    let mut clearances = Vec::new();
    let mut vectors: Vec<(String, Vec<f32>)> = Vec::new();
    for name in &plan.collections {
        let mut collection = Collection::open(data, name)?;
        super::rag::attest(&registry, &mut collection)?;
        let class = args
            .clearance
            .clone()
            .unwrap_or_else(|| collection.classes().lowest().to_owned());
        let clearance = Clearance::new(collection.classes(), &class, args.groups.clone())
            .with_context(|| format!("collection {name}"))?;
        clearances.push(class);
        // Collections pinned to the same model share its load and the query's vector.
        let pinned = collection.pin().digest.clone();
        let vector = match vectors.iter().find(|(digest, _)| *digest == pinned) {
            Some((_, vector)) => vector.clone(),
            None => {
                let loaded = pinned_model(&registry, &collection, args.threads, "ask")?;
                let vector =
                    airlock_rag::block_on(Collection::embed_query(&loaded.engine, &args.question))?;
                vectors.push((pinned, vector.clone()));
                counter.get_or_insert(loaded.engine);
                vector
            }
        };
        for hit in collection.search(
            &args.question,
            &vector,
            &clearance,
            plan.top_k,
            &Weights::default(),
        )? {
            hits.push((name.clone(), hit));
        }
    }
    let sources = answer::select(hits, plan.top_k, plan.budget, |text| {
        counter
            .as_ref()
            .and_then(|e| e.count_tokens(text).ok())
            .unwrap_or(text.len() / 3 + 1)
    });
    let grounding = Grounding::new(sources, &FenceKey::random());

    let model = approved(data, &plan.model, "llm", "ask")?;
    let mut config = ChatConfig::default();
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let chat = ChatModel::load(&files(&model), &config)?;
    let prompt = chat.chat_prompt(&[
        Message::new(Role::System, grounding.instructions()),
        Message::new(Role::User, args.question.clone()),
    ])?;
    let params = GenerateParams {
        max_tokens: Some(args.max_tokens),
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    };
    let mut generation = chat.generate(prompt, params)?;
    let mut text = String::new();
    while let Some(event) = generation.next_blocking() {
        match event? {
            Event::Token { text: piece, .. } => {
                if !args.json {
                    output::out(&piece)?;
                }
                text.push_str(&piece);
            }
            Event::Done { text: rest, .. } => {
                if !args.json {
                    output::out(&rest)?;
                }
                text.push_str(&rest);
                break;
            }
        }
    }
    let checked = grounding.check(&text);
    registry.audit_log().append(
        Entry::new(registry.actor(), "collection.ask", Outcome::Ok)
            .subject(model.digest.clone())
            .detail("model", format!("{}:{}", model.name, model.version))
            .detail("collections", plan.collections.join(" "))
            .detail("clearance", clearances.join(" "))
            .detail(
                "query_sha256",
                hex::encode(Sha256::digest(args.question.as_bytes())),
            )
            .detail("sources", grounding.audit_sources())
            .detail("citations", grounding.audit_citations(&checked))
            .detail(
                "completion_sha256",
                hex::encode(Sha256::digest(text.as_bytes())),
            ),
    )?;
    if args.json {
        output::json(&json!({
            "model": format!("{}:{}", model.name, model.version),
            "digest": model.digest,
            "answer": text,
            "citations": checked.citations.iter().map(|c| {
                let s = &grounding.sources[c.number - 1];
                json!({"source": c.number, "kind": c.kind.as_str(), "start_index": c.span.start,
                       "end_index": c.span.end, "quote": c.quote, "document": s.chunk.document,
                       "chunk": s.chunk.id, "class": s.chunk.class, "heading": s.chunk.heading,
                       "location": s.chunk.location.describe()})
            }).collect::<Vec<_>>(),
            "unresolved_citations": checked.unresolved.iter().map(|u| u.number).collect::<Vec<_>>(),
            "sources": grounding.sources.iter().map(source_json).collect::<Vec<_>>(),
        }))?;
    } else {
        output::out(&format!("\n\n{}", cited_list(&checked, &grounding.sources)))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn source_json(s: &Source) -> Value {
    json!({"source": s.number, "collection": s.collection, "document": s.chunk.document,
           "document_version": s.chunk.document_version, "chunk": s.chunk.id,
           "class": s.chunk.class, "heading": s.chunk.heading,
           "location": s.chunk.location.describe(), "score": s.score})
}

/// The sources the answer cites, for people.
fn cited_list(checked: &Checked, sources: &[Source]) -> String {
    if sources.is_empty() {
        return "No source: no document at this clearance matches the question.\n".into();
    }
    let mut numbers: Vec<usize> = checked.citations.iter().map(|c| c.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut text = if numbers.is_empty() {
        format!(
            "The answer cites none of the {} sources it was given.\n",
            sources.len()
        )
    } else {
        "Sources cited:\n".to_owned()
    };
    for n in numbers {
        let c = &sources[n - 1].chunk;
        let heading = if c.heading.is_empty() {
            String::new()
        } else {
            format!(" > {}", c.heading)
        };
        text.push_str(&format!(
            "  [{n}] {}{heading} ({}) [{}]\n",
            c.document,
            c.location.describe(),
            c.class
        ));
    }
    for u in &checked.unresolved {
        text.push_str(&format!(
            "  [{}] names no source given to the model; ignored\n",
            u.number
        ));
    }
    text
}
