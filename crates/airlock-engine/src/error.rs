//! What can go wrong loading and running a model.

/// Engine errors. Each names the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model's files are not what the engine can load.
    #[error("model {model}: {reason}")]
    Model {
        /// Which model.
        model: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The chat template could not be rendered.
    #[error("{0}")]
    Template(String),
    /// The request asks for something the model cannot do.
    #[error("{0}")]
    Request(String),
    /// The prompt and the requested answer do not fit the context window.
    #[error(
        "the prompt is {prompt} tokens and {requested} more were asked for, but the context holds {context}"
    )]
    ContextLength {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens asked for (at least one).
        requested: usize,
        /// Tokens one sequence can hold.
        context: usize,
    },
    /// Every slot is running and the queue is full: try again later.
    #[error("busy: {running} generations running and {queued} queued; try again later")]
    Busy {
        /// Generations running.
        running: usize,
        /// Requests waiting.
        queued: usize,
    },
    /// The engine stopped (its worker ended).
    #[error("the engine has stopped: {0}")]
    Stopped(String),
    /// llama.cpp reported a failure while running.
    #[error("inference failed: {0}")]
    Inference(String),
    /// Reading a model file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the model's own files are at fault (inconsistent, hostile or unsupported),
    /// as opposed to the request or the machine.
    pub fn is_model_failure(&self) -> bool {
        matches!(self, Self::Model { .. } | Self::Template(_))
    }

    pub(crate) fn model(model: &str, reason: impl Into<String>) -> Self {
        Self::Model {
            model: model.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Engine results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
