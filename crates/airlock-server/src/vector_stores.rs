//! `POST /v1/vector_stores/{name}/search`: a collection searched in the shape of OpenAI's
//! vector store search, so the official SDK's `client.vector_stores.search(...)` works, at the
//! clearance (and access groups) of the calling key or token. Every search is audited with
//! its collection, clearance, the query's digest and the chunks it returned with their
//! classes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::App;
use crate::error::{ApiError, Dialect};
use crate::gate::RequestRecord;
use crate::generation::{parse_body, refuse_if};

/// Most results one search returns (OpenAI's ceiling).
const MAX_RESULTS: u64 = 50;
/// Longest query.
const MAX_QUERY_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Query {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankingOptions {
    #[expect(
        dead_code,
        reason = "accepted for compatibility; the fusion is the server's"
    )]
    ranker: Option<String>,
    score_threshold: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: Query,
    max_num_results: Option<u64>,
    filters: Option<Value>,
    ranking_options: Option<RankingOptions>,
    rewrite_query: Option<bool>,
}

/// `POST /v1/vector_stores/{name}/search`.
pub(crate) async fn search(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Extension(record): Extension<Arc<RequestRecord>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(app, name, record, body)
        .await
        .unwrap_or_else(|e| e.into_response_for(Dialect::OpenAi))
}

async fn run(
    app: Arc<App>,
    name: String,
    record: Arc<RequestRecord>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: SearchRequest = parse_body(body, &record, app.config.limits.max_body_bytes)?;
    let served = app
        .collections
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::UnknownCollection { name: name.clone() })?;
    refuse_if(&request.filters, "filters", Value::is_null)?;
    refuse_if(&request.rewrite_query, "rewrite_query", |v| !v)?;
    let query = match request.query {
        Query::One(q) => q,
        Query::Many(qs) => qs.join(" "),
    };
    if query.trim().is_empty() {
        return Err(ApiError::invalid_param("query", "query must not be empty"));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid_param(
            "query",
            format!(
                "query is {} bytes, over the limit of {MAX_QUERY_BYTES}",
                query.len()
            ),
        ));
    }
    let k = request.max_num_results.unwrap_or(10);
    if !(1..=MAX_RESULTS).contains(&k) {
        return Err(ApiError::invalid_param(
            "max_num_results",
            format!("max_num_results is {k}; it must be 1 to {MAX_RESULTS}"),
        ));
    }
    let threshold = request.ranking_options.and_then(|r| r.score_threshold);
    let principal = record.principal().ok_or_else(|| ApiError::Internal {
        detail: "a search without a caller".into(),
    })?;
    record.detail("collection", name.clone());
    record.detail("clearance", principal.clearance.clone());
    record.detail(
        "query_sha256",
        hex::encode(Sha256::digest(query.as_bytes())),
    );
    let hits = served.search(principal, &query, k as usize).await?;
    let hits: Vec<_> = hits
        .into_iter()
        .filter(|h| threshold.is_none_or(|t| h.score >= t))
        .collect();
    record.detail(
        "chunks",
        hits.iter()
            .map(|h| format!("{}:{}", h.chunk.id, h.chunk.class))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let data: Vec<Value> = hits
        .iter()
        .map(|hit| {
            let c = &hit.chunk;
            json!({
                "file_id": c.document,
                "filename": c.title.clone().unwrap_or_else(|| file_name(&c.document)),
                "score": hit.score,
                "attributes": {
                    "class": c.class, "heading": c.heading, "location": c.location.describe(),
                    "chunk": c.id, "commit": c.commit.clone().unwrap_or_default(),
                },
                "content": [{"type": "text", "text": c.text}],
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": data,
        "has_more": false,
        "next_page": null,
    }))
    .into_response())
}

fn file_name(document: &str) -> String {
    document.rsplit('/').next().unwrap_or(document).to_owned()
}
