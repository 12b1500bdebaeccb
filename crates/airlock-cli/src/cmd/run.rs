//! `airlock run` and `airlock embed`: the embedded engine on approved registry versions.

use std::path::Path;
use std::process::ExitCode;

use airlock_engine::embed::{EmbeddingConfig, cosine};
use airlock_engine::{
    ChatConfig, ChatModel, EmbeddingModel, Event, GenerateParams, Message, ModelFiles, Role,
    SamplingParams,
};
use airlock_registry::{ApprovedModel, Reference};
use anyhow::{Context as _, bail};
use serde_json::json;

use super::open_registry;
use crate::cli::{EmbedArgs, RunArgs};
use crate::output;

/// Opens an approved version (re-hashing its blobs) and checks it is of the wanted kind.
pub(super) fn approved(
    data: &Path,
    reference: &str,
    kind: &str,
    purpose: &str,
) -> anyhow::Result<ApprovedModel> {
    let registry = open_registry(data)?;
    let reference = Reference::parse(reference)?;
    let model = registry.open_approved(&reference, purpose)?;
    if model.kind != kind {
        let (what, use_instead) = if model.kind == "embedding" {
            ("an embedding", "airlock embed")
        } else {
            ("a chat", "airlock run")
        };
        bail!(
            "{}:{} is {what} model; use `{use_instead}`",
            model.name,
            model.version
        );
    }
    Ok(model)
}

pub(super) fn files(model: &ApprovedModel) -> ModelFiles {
    ModelFiles::new(
        format!("{}:{}", model.name, model.version),
        model.files.clone(),
    )
}

pub(crate) fn chat(args: RunArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let approved = approved(data, &args.reference, "llm", "run")?;
    let mut config = ChatConfig {
        context_per_slot: args.context,
        ..ChatConfig::default()
    };
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let model = ChatModel::load(&files(&approved), &config)?;
    let prompt = if args.raw {
        model.text_prompt(&args.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new(Role::System, system.clone()));
        }
        messages.push(Message::new(Role::User, args.prompt.clone()));
        model.chat_prompt(&messages)?
    };
    let params = GenerateParams {
        max_tokens: Some(args.max_tokens),
        stop: args.stop.clone(),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
        },
        ..GenerateParams::default()
    };
    let mut generation = model.generate(prompt, params)?;
    if args.json {
        let done = generation.collect_blocking()?;
        output::json(&json!({
            "model": format!("{}:{}", approved.name, approved.version),
            "digest": approved.digest,
            "text": done.text,
            "tokens": done.tokens,
            "finish_reason": done.reason,
            "usage": done.usage,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    while let Some(event) = generation.next_blocking() {
        match event? {
            Event::Token { text, .. } => output::out(&text)?,
            Event::Done { text, .. } => {
                output::out(&format!("{text}\n"))?;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    bail!("the generation ended without finishing")
}

pub(crate) fn embed(args: EmbedArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let approved = approved(data, &args.reference, "embedding", "embed")?;
    let mut config = EmbeddingConfig::default();
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let model = EmbeddingModel::load(&files(&approved), &config)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let embeddings = model.embed(&texts).context("embedding failed")?;
    if args.json {
        output::json(&json!({
            "model": format!("{}:{}", approved.name, approved.version),
            "digest": approved.digest,
            "dimension": model.info().dimension,
            "normalized": model.info().normalized,
            "tokens": embeddings.tokens,
            "embeddings": embeddings.vectors,
        }))?;
    } else {
        // People read a summary; scripts take the vectors from --json.
        for (n, (text, vector)) in texts.iter().zip(&embeddings.vectors).enumerate() {
            let head: Vec<String> = vector.iter().take(4).map(|v| format!("{v:.4}")).collect();
            output::out(&format!(
                "{}: {} dimensions [{}, …]  {text:?}\n",
                n + 1,
                vector.len(),
                head.join(", ")
            ))?;
        }
        for i in 0..texts.len() {
            for j in i + 1..texts.len() {
                let similarity = cosine(&embeddings.vectors[i], &embeddings.vectors[j]);
                output::out(&format!(
                    "cosine similarity {}–{}: {similarity:.4}\n",
                    i + 1,
                    j + 1
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
