//! What can go wrong loading and running a model.

use std::time::Duration;

use crate::interface::Param;

/// Engine errors. Each names the problem in one line; [`Error::kind`] sorts them into the
/// few classes an API answers differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A request parameter has a value no engine takes; `reason` reads after its name.
    #[error("{param} {reason}")]
    Invalid {
        /// Which parameter.
        param: Param,
        /// What is wrong with it.
        reason: String,
    },
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
    /// The engine is down for now (an engine process restarting): try again after
    /// `retry_after`.
    #[error("the engine is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// How long until it is expected back.
        retry_after: Duration,
    },
    /// An engine process answered in a way the interface does not allow (a malformed
    /// stream, an unexpected status).
    #[error("the engine process failed: {0}")]
    Upstream(String),
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

/// The classes of [`Error`] that callers answer differently. Deliberately exhaustive: a new
/// class is a change every caller must handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for what the model cannot do.
    InvalidRequest,
    /// The prompt and the requested answer do not fit the context.
    ContextLength,
    /// The engine's queue is full: try again soon.
    Busy,
    /// The engine is down for now: try again after [`Error::retry_after`].
    Unavailable,
    /// The engine or the model failed; nothing the caller can change.
    Failed,
}

impl Error {
    /// Which class of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(_) | Self::Invalid { .. } | Self::Template(_) => {
                ErrorKind::InvalidRequest
            }
            Self::ContextLength { .. } => ErrorKind::ContextLength,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Model { .. }
            | Self::Upstream(_)
            | Self::Stopped(_)
            | Self::Inference(_)
            | Self::Io { .. } => ErrorKind::Failed,
        }
    }

    /// The parameter at fault and what is wrong with it (reading after its name), if one
    /// parameter is at fault.
    pub fn invalid_param(&self) -> Option<(Param, &str)> {
        match self {
            Self::Invalid { param, reason } => Some((*param, reason)),
            _ => None,
        }
    }

    /// How long to wait before asking again, for errors that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(*retry_after),
            Self::Busy { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

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
