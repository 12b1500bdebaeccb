//! The embedded [`Embedder`]: one worker thread per model that merges waiting requests into
//! one batch.
//!
//! The model packs texts without padding, so a merged batch costs what its tokens cost, and
//! larger matrix products run faster than many small ones. The queue is bounded: when it is
//! full a request is refused at once with [`Error::Busy`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{EmbeddingModel, EmbeddingModelInfo, Embeddings};
use crate::interface::{BoxFuture, Embedder, EngineKind, EngineStatus};
use crate::{Error, Result};

/// An embedding model behind its batching worker.
#[derive(Debug)]
pub struct EmbeddingEngine {
    model: Arc<EmbeddingModel>,
    jobs: mpsc::Sender<EmbedJob>,
    queue: usize,
    running: Arc<AtomicBool>,
    batches: Arc<AtomicU64>,
}

/// One request's texts and where its answer goes.
#[derive(Debug)]
struct EmbedJob {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Embeddings>>,
}

impl EmbeddingEngine {
    /// Starts the worker thread for `model`; `queue` requests may wait, and one merged
    /// batch holds at most `max_batch` texts. The thread ends when the engine is dropped.
    pub fn start(model: EmbeddingModel, queue: usize, max_batch: usize) -> Result<Self> {
        let queue = queue.max(1);
        let (jobs, incoming) = mpsc::channel(queue);
        let running = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicU64::new(0));
        let model = Arc::new(model);
        let counters = (Arc::clone(&running), Arc::clone(&batches));
        let worker_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name(format!("embed {}", model.info().label))
            .spawn(move || embed_batches(&worker_model, incoming, max_batch.max(1), &counters))
            .map_err(|e| Error::Inference(format!("cannot start the embedding worker: {e}")))?;
        Ok(Self {
            model,
            jobs,
            queue,
            running,
            batches,
        })
    }

    /// The model's facts (dimension, maximum tokens).
    pub fn info(&self) -> &EmbeddingModelInfo {
        self.model.info()
    }

    /// The model itself, for in-process callers (benchmarks) that bypass the queue.
    pub fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    fn waiting(&self) -> usize {
        self.queue.saturating_sub(self.jobs.capacity())
    }

    async fn embed_queued(&self, texts: Vec<String>) -> Result<Embeddings> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(EmbedJob { texts, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Busy {
                    running: usize::from(self.running.load(Ordering::Relaxed)),
                    queued: self.waiting(),
                },
                mpsc::error::TrySendError::Closed(_) => {
                    Error::Stopped("the embedding worker has ended".into())
                }
            })?;
        answer
            .await
            .map_err(|_| Error::Stopped("the embedding worker dropped the request".into()))?
    }
}

impl Embedder for EmbeddingEngine {
    fn dimension(&self) -> usize {
        self.model.info().dimension
    }

    fn max_tokens(&self) -> usize {
        self.model.info().max_tokens
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.model.count_tokens(text)
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Embeddings>> {
        Box::pin(self.embed_queued(texts))
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            batches: Some(self.batches.load(Ordering::Relaxed)),
            ..EngineStatus::ready(
                EngineKind::Embedded,
                usize::from(self.running.load(Ordering::Relaxed)),
                self.waiting(),
            )
        }
    }
}

/// The worker loop: takes the first waiting job, adds every other waiting job while the
/// batch stays within `max_batch` texts, embeds them together and hands each its share.
fn embed_batches(
    model: &EmbeddingModel,
    mut incoming: mpsc::Receiver<EmbedJob>,
    max_batch: usize,
    (running, batches): &(Arc<AtomicBool>, Arc<AtomicU64>),
) {
    let mut carried: Option<EmbedJob> = None;
    loop {
        let Some(first) = carried.take().or_else(|| incoming.blocking_recv()) else {
            return;
        };
        let mut texts = first.texts.len();
        let mut batch = vec![first];
        while let Ok(job) = incoming.try_recv() {
            if texts + job.texts.len() > max_batch {
                carried = Some(job);
                break;
            }
            texts += job.texts.len();
            batch.push(job);
        }
        // Callers that went away while waiting cost nothing.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        running.store(true, Ordering::Relaxed);
        // Counted before the replies go out, so a caller that reads the count after its
        // answer always sees its own batch.
        batches.fetch_add(1, Ordering::Relaxed);
        answer_batch(model, batch);
        running.store(false, Ordering::Relaxed);
    }
}

/// Embeds `batch` in one call and splits the result; if the merged call fails, each job runs
/// alone, so one request's bad input fails only that request.
fn answer_batch(model: &EmbeddingModel, batch: Vec<EmbedJob>) {
    if batch.len() > 1 {
        let all: Vec<&str> = batch
            .iter()
            .flat_map(|job| job.texts.iter().map(String::as_str))
            .collect();
        if let Ok(merged) = model.embed(&all) {
            let mut vectors = merged.vectors.into_iter();
            let mut counts = merged.text_tokens.into_iter();
            for job in batch {
                let n = job.texts.len();
                let text_tokens: Vec<usize> = counts.by_ref().take(n).collect();
                let _ = job.reply.send(Ok(Embeddings {
                    vectors: vectors.by_ref().take(n).collect(),
                    tokens: text_tokens.iter().sum(),
                    text_tokens,
                }));
            }
            return;
        }
    }
    for job in batch {
        let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
        let _ = job.reply.send(model.embed(&texts));
    }
}
