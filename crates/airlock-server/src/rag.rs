//! Chat answers from knowledge collections: a model served with `rag = { collections = [...] }`
//! retrieves with the conversation at the caller's clearance, gets the chunks as fenced,
//! numbered sources in its system instruction, and its answer's citations are checked
//! against exactly those sources before they are returned.

use std::sync::Arc;

use airlock_engine::{Message, Role};
use airlock_rag::answer::{self, Checked, Grounding, Source};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::App;
use crate::config::RagSpec;
use crate::error::ApiError;
use crate::gate::RequestRecord;

/// Longest retrieval query, in bytes: the last user turn first, then earlier ones.
const MAX_QUERY_BYTES: usize = 4096;
/// Earlier user turns that join the query, so that a follow-up finds what it refers to.
const EARLIER_TURNS: usize = 2;

/// What retrieval put into one request's prompt, and the answer's citations once checked.
#[derive(Debug)]
pub(crate) struct Grounded {
    grounding: Grounding,
    /// Return the placed sources with the answer (`airlock_sources: true`).
    return_sources: bool,
    /// The answer so far.
    text: String,
    /// The answer's citations, once [`Grounded::settle`] has checked them.
    checked: Checked,
}

impl Grounded {
    /// Adds answer text as it arrives.
    pub(crate) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Checks the answer's citations and records them in the request's audit entry;
    /// `partial`: the answer was cut short (an error, the client gone).
    pub(crate) fn settle(&mut self, text: Option<&str>, record: &RequestRecord, partial: bool) {
        if let Some(text) = text {
            self.text = text.to_owned();
        }
        let checked = self.grounding.check(&self.text);
        record.detail("citations", self.grounding.audit_citations(&checked));
        if partial {
            record.detail("citations_of_partial_answer", true);
        }
        if !checked.unresolved.is_empty() {
            record.detail(
                "unresolved_citations",
                checked
                    .unresolved
                    .iter()
                    .map(|u| u.number.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        self.checked = checked;
    }

    /// OpenAI's `message.annotations`: one `url_citation` per checked citation, with the
    /// chunk's document, id, class, location and the quoted words beside the standard
    /// fields.
    pub(crate) fn openai_annotations(&self) -> Value {
        let annotations: Vec<Value> = self
            .checked
            .citations
            .iter()
            .map(|c| {
                let s = &self.grounding.sources[c.number - 1];
                json!({
                    "type": "url_citation",
                    "url_citation": {
                        "start_index": c.span.start,
                        "end_index": c.span.end,
                        "title": title(s),
                        "url": url(s),
                        "source": c.number,
                        "kind": c.kind.as_str(),
                        "collection": s.collection,
                        "document": s.chunk.document,
                        "document_version": s.chunk.document_version,
                        "chunk": s.chunk.id,
                        "class": s.chunk.class,
                        "heading": s.chunk.heading,
                        "location": s.chunk.location.describe(),
                        "quote": c.quote,
                    },
                })
            })
            .collect();
        Value::Array(annotations)
    }

    /// Anthropic's text-block `citations`: one `search_result_location` per checked
    /// citation, with the same chunk fields.
    pub(crate) fn anthropic_citations(&self) -> Vec<Value> {
        self.checked
            .citations
            .iter()
            .map(|c| {
                let s = &self.grounding.sources[c.number - 1];
                json!({
                    "type": "search_result_location",
                    "cited_text": c.quote,
                    "source": s.chunk.document,
                    "title": title(s),
                    "search_result_index": c.number - 1,
                    "start_block_index": 0,
                    // Exclusive: the search result's one block.
                    "end_block_index": 1,
                    "kind": c.kind.as_str(),
                    "collection": s.collection,
                    "document_version": s.chunk.document_version,
                    "chunk": s.chunk.id,
                    "class": s.chunk.class,
                    "heading": s.chunk.heading,
                    "location": s.chunk.location.describe(),
                })
            })
            .collect()
    }

    /// The `airlock` extension of an answer: the markers that named no source, and the
    /// placed sources when asked for.
    pub(crate) fn extension(&self) -> Value {
        let checked = &self.checked;
        let mut extension = json!({
            "sources_placed": self.grounding.sources.len(),
            "unresolved_citations": checked.unresolved.iter().map(|u| json!({
                "marker": u.number, "start_index": u.span.start, "end_index": u.span.end,
            })).collect::<Vec<_>>(),
        });
        if self.grounding.sources.is_empty() {
            extension["note"] = json!("no document available to you matched the question");
        }
        if self.return_sources {
            extension["sources"] = self
                .grounding
                .sources
                .iter()
                .map(|s| {
                    json!({
                        "source": s.number, "collection": s.collection,
                        "document": s.chunk.document, "document_version": s.chunk.document_version,
                        "chunk": s.chunk.id, "class": s.chunk.class, "heading": s.chunk.heading,
                        "location": s.chunk.location.describe(), "score": s.score,
                        "text": s.chunk.text,
                    })
                })
                .collect();
        }
        extension
    }
}

fn title(source: &Source) -> String {
    source
        .chunk
        .title
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            source
                .chunk
                .document
                .rsplit('/')
                .next()
                .unwrap_or(&source.chunk.document)
                .to_owned()
        })
}

fn url(source: &Source) -> String {
    format!(
        "airlock://{}/{}#chunk-{}",
        source.collection,
        source.chunk.document.trim_start_matches('/'),
        source.chunk.id
    )
}

/// Whether the model served as `alias` answers from collections.
pub(crate) fn answers_from_collections(app: &App, alias: &str) -> bool {
    app.config
        .models
        .get(alias)
        .is_some_and(|m| m.rag.is_some())
}

/// Retrieves for `conversation` at the caller's clearance, places the sources in its
/// system instruction, and records what was placed in the request's audit entry.
/// `None` when the model answers without collections.
pub(crate) async fn ground(
    app: &App,
    record: &RequestRecord,
    alias: &str,
    conversation: &mut Vec<Message>,
    return_sources: bool,
) -> Result<Option<Grounded>, ApiError> {
    let Some(spec) = app.config.models.get(alias).and_then(|m| m.rag.clone()) else {
        if return_sources {
            return Err(ApiError::invalid_param(
                "airlock_sources",
                format!("model {alias} does not answer from collections"),
            ));
        }
        return Ok(None);
    };
    let query = retrieval_query(conversation).ok_or_else(|| {
        ApiError::invalid_param(
            "messages",
            "a question needs a user message to retrieve with",
        )
    })?;
    let sources = retrieve(app, record, &spec, &query).await?;
    let grounding = Grounding::new(sources, &app.fence_key);
    // Durable before the answer begins: which classified chunks went into the prompt.
    record.request_detail("sources", grounding.audit_sources());
    let instructions = grounding.instructions();
    match conversation.first_mut() {
        Some(first) if first.role == Role::System => {
            let caller = std::mem::take(&mut first.content);
            first.content = format!("{instructions}\n\n{caller}");
        }
        _ => conversation.insert(0, Message::new(Role::System, instructions)),
    }
    Ok(Some(Grounded {
        grounding,
        return_sources,
        text: String::new(),
        checked: Checked::default(),
    }))
}

/// The chunks of `spec`'s collections for `query`, best first over all of them, placed
/// within the token budget.
async fn retrieve(
    app: &App,
    record: &RequestRecord,
    spec: &RagSpec,
    query: &str,
) -> Result<Vec<Source>, ApiError> {
    let principal = record.principal().ok_or_else(|| ApiError::Internal {
        detail: "a retrieval without a caller".into(),
    })?;
    record.request_detail("collections", spec.collections.join(" "));
    record.request_detail(
        "rag_query_sha256",
        hex::encode(Sha256::digest(query.as_bytes())),
    );
    let mut ranked = Vec::new();
    let mut counter = None;
    let mut skipped = Vec::new();
    let mut vectors: Vec<(String, Vec<f32>)> = Vec::new();
    for name in &spec.collections {
        let served = app
            .collections()
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::Internal {
                detail: format!("collection {name} is not served"),
            })?;
        counter.get_or_insert_with(|| Arc::clone(&served.embedder));
        // Collections pinned to the same model share one query embedding.
        let vector = match vectors.iter().find(|(digest, _)| *digest == served.digest) {
            Some((_, vector)) => vector.clone(),
            None => {
                let vector = served.embed(query).await?;
                vectors.push((served.digest.clone(), vector.clone()));
                vector
            }
        };
        let hits = match served
            .search_embedded(principal.clone(), query, vector, spec.top_k)
            .await
        {
            Ok(hits) => hits,
            // A collection whose classes do not include the caller's clearance has nothing
            // for it; the others still answer.
            Err(ApiError::Forbidden { .. }) => {
                skipped.push(name.as_str());
                continue;
            }
            Err(e) => return Err(e),
        };
        for hit in hits {
            ranked.push((name.clone(), hit));
        }
    }
    if !skipped.is_empty() {
        record.request_detail("collections_not_at_clearance", skipped.join(" "));
    }
    Ok(answer::select(
        ranked,
        spec.top_k,
        spec.max_context_tokens,
        |text| {
            counter
                .as_ref()
                .and_then(|e| e.count_tokens(text).ok())
                .unwrap_or(text.len() / 3 + 1)
        },
    ))
}

/// The last user turn, then up to [`EARLIER_TURNS`] earlier ones, most recent first, cut at
/// [`MAX_QUERY_BYTES`].
fn retrieval_query(conversation: &[Message]) -> Option<String> {
    let mut turns = conversation
        .iter()
        .rev()
        .filter(|m| m.role == Role::User)
        .take(EARLIER_TURNS + 1)
        .map(|m| m.content.trim());
    let mut query = turns.next()?.to_owned();
    for earlier in turns {
        query.push('\n');
        query.push_str(earlier);
    }
    let mut end = query.len().min(MAX_QUERY_BYTES);
    while !query.is_char_boundary(end) {
        end -= 1;
    }
    query.truncate(end);
    (!query.trim().is_empty()).then_some(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_retrieves_with_the_turns_before_it() {
        let conversation = vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "What is the lighthouse protocol?"),
            Message::new(Role::Assistant, "It has three steps."),
            Message::new(Role::User, "And what about the second one?"),
        ];
        assert_eq!(
            retrieval_query(&conversation).unwrap(),
            "And what about the second one?\nWhat is the lighthouse protocol?"
        );
        assert_eq!(
            retrieval_query(&[Message::new(Role::System, "x")]),
            None,
            "no user turn, nothing to retrieve with"
        );
    }

    #[test]
    fn the_query_is_bounded_and_keeps_the_last_turn_first() {
        let long = "é".repeat(4000);
        let conversation = vec![
            Message::new(Role::User, long.clone()),
            Message::new(Role::User, "latest"),
        ];
        let query = retrieval_query(&conversation).unwrap();
        assert!(query.len() <= MAX_QUERY_BYTES);
        assert!(query.starts_with("latest\n"));
    }
}
