//! Errors: [`Error`] for starting the server, [`ApiError`] for answering a request.
//!
//! An [`ApiError`] becomes a response in the shape of the API that was called: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` or Anthropic's
//! `{"type": "error", "error": {"type", "message"}}`. Server-side failures (5xx) send a
//! generic message; the detail goes to the log and the audit entry.

use std::path::PathBuf;

use airlock_engine::interface::retry_after_seconds;
use airlock_engine::{ErrorKind, Param};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("{}invalid configuration: {reason}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config {
        /// The file, if the problem is in one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A configured model may not be served.
    #[error("model {alias} ({reference}) cannot be served: {reason}")]
    Admission {
        /// The alias it was configured under.
        alias: String,
        /// Its registry reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The JWKS file is missing or malformed.
    #[error("{path}: invalid JWKS: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] airlock_registry::Error),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(#[from] airlock_audit::Error),
    /// Binding or serving the socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Server results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which API's error shape to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`, admin.
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
}

/// Why a request was not answered normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The body is not valid JSON or not the expected shape.
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter, if one.
        param: Option<String>,
    },
    /// A parameter the server does not implement was set.
    Unsupported {
        /// The parameter.
        param: String,
        /// What is not supported about it.
        message: String,
    },
    /// No credentials, or credentials that are not valid. The reason goes to the audit log,
    /// never to the client.
    Unauthenticated {
        /// Why (for the audit log).
        reason: String,
    },
    /// Valid credentials without the role the route needs.
    Forbidden {
        /// What was needed.
        message: String,
    },
    /// The model alias is not served here.
    UnknownModel {
        /// The alias asked for.
        model: String,
    },
    /// The collection is not served here.
    UnknownCollection {
        /// The name asked for.
        name: String,
    },
    /// The route does not exist.
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The method is not allowed on the route.
    MethodNotAllowed,
    /// The body is over the configured limit.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The prompt and requested answer do not fit the model's context.
    ContextLength {
        /// What does not fit.
        message: String,
    },
    /// A queue or a per-key limit is full; retry after the given seconds.
    RateLimited {
        /// What is full.
        message: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The server failed (the engine, the audit log). Details are logged, not sent.
    Internal {
        /// What failed (logged only).
        detail: String,
    },
    /// The server or the model's engine is not ready (starting, restarting, or stopped
    /// taking requests).
    Unavailable {
        /// Why.
        message: String,
        /// Seconds until it is expected back, sent as `Retry-After`.
        retry_after: Option<u64>,
    },
    /// The client went away before the answer ended (recorded, never sent).
    ClientClosed,
    /// The request conflicts with the server's state (a reload that would serve a model
    /// admission refuses).
    Conflict {
        /// What conflicts, and why.
        message: String,
    },
}

/// nginx's "client closed request": the common status for a request the client abandoned.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl ApiError {
    /// An invalid-request error without a parameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// An invalid-request error about `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    /// An unsupported-parameter error.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::Unsupported {
            param: param.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::Unsupported { .. } | Self::ContextLength { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::UnknownModel { .. } | Self::UnknownCollection { .. } | Self::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientClosed => {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable snake_case name, for the audit log and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Unsupported { .. } => "unsupported_parameter",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::UnknownModel { .. } => "model_not_found",
            Self::UnknownCollection { .. } => "vector_store_not_found",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ClientClosed => "client_closed",
            Self::TooLarge { .. } => "request_too_large",
            Self::ContextLength { .. } => "context_length_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal { .. } => "internal",
            Self::Unavailable { .. } => "unavailable",
            Self::Conflict { .. } => "conflict",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidRequest { message, .. }
            | Self::Unsupported { message, .. }
            | Self::Forbidden { message }
            | Self::ContextLength { message }
            | Self::RateLimited { message, .. }
            | Self::Unavailable { message, .. }
            | Self::Conflict { message } => message.clone(),
            Self::Unauthenticated { .. } => {
                "invalid or missing credentials: send an API key or an OIDC token".into()
            }
            Self::UnknownCollection { name } => {
                format!("the vector store {name:?} does not exist or is not served here")
            }
            Self::UnknownModel { model } => {
                format!("the model {model:?} does not exist or is not served here")
            }
            Self::NotFound { path } => format!("no route {path}"),
            Self::MethodNotAllowed => "method not allowed on this route".into(),
            Self::ClientClosed => "the client closed the connection before the answer ended".into(),
            Self::TooLarge { limit } => format!("the request body is over the {limit}-byte limit"),
            Self::Internal { .. } => "the server failed to handle the request".into(),
        }
    }

    /// What the audit log and server log keep: the client message, or the hidden detail.
    pub fn detail(&self) -> String {
        match self {
            Self::Unauthenticated { reason } => reason.clone(),
            Self::Internal { detail } => detail.clone(),
            other => other.message(),
        }
    }

    /// The response in `dialect`'s error shape.
    pub fn into_response_for(self, dialect: Dialect) -> Response {
        let status = self.status();
        let body = match dialect {
            Dialect::OpenAi => {
                let (kind, param, code) = match &self {
                    Self::InvalidRequest { param, .. } => {
                        ("invalid_request_error", param.clone(), None)
                    }
                    Self::Unsupported { param, .. } => (
                        "invalid_request_error",
                        Some(param.clone()),
                        Some("unsupported_parameter"),
                    ),
                    Self::ContextLength { .. } => (
                        "invalid_request_error",
                        Some("messages".to_owned()),
                        Some("context_length_exceeded"),
                    ),
                    Self::Unauthenticated { .. } => {
                        ("authentication_error", None, Some("invalid_api_key"))
                    }
                    Self::Forbidden { .. } => ("permission_error", None, None),
                    Self::UnknownCollection { .. } => (
                        "invalid_request_error",
                        Some("vector_store_id".to_owned()),
                        Some("vector_store_not_found"),
                    ),
                    Self::UnknownModel { .. } => (
                        "invalid_request_error",
                        Some("model".to_owned()),
                        Some("model_not_found"),
                    ),
                    Self::NotFound { .. }
                    | Self::MethodNotAllowed
                    | Self::TooLarge { .. }
                    | Self::ClientClosed
                    | Self::Conflict { .. } => ("invalid_request_error", None, None),
                    Self::RateLimited { .. } => {
                        ("rate_limit_error", None, Some("rate_limit_exceeded"))
                    }
                    Self::Internal { .. } | Self::Unavailable { .. } => {
                        ("server_error", None, None)
                    }
                };
                json!({"error": {"message": self.message(), "type": kind, "param": param, "code": code}})
            }
            Dialect::Anthropic => {
                let kind = match &self {
                    Self::InvalidRequest { .. }
                    | Self::Unsupported { .. }
                    | Self::ContextLength { .. }
                    | Self::MethodNotAllowed
                    | Self::ClientClosed
                    | Self::Conflict { .. } => "invalid_request_error",
                    Self::Unauthenticated { .. } => "authentication_error",
                    Self::Forbidden { .. } => "permission_error",
                    Self::UnknownModel { .. }
                    | Self::UnknownCollection { .. }
                    | Self::NotFound { .. } => "not_found_error",
                    Self::TooLarge { .. } => "request_too_large",
                    Self::RateLimited { .. } => "rate_limit_error",
                    Self::Internal { .. } => "api_error",
                    Self::Unavailable { .. } => "overloaded_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": self.message()}})
            }
        };
        let mut response = (status, axum::Json(body)).into_response();
        // The gate reads the error back for the audit entry.
        response.extensions_mut().insert(self.clone());
        let retry_after = match &self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The error for an engine failure, with `param_name` giving the parameter at fault its
    /// name in the API that was called. The mapping covers every [`ErrorKind`] by name.
    pub fn from_engine(
        e: airlock_engine::Error,
        param_name: impl Fn(Param) -> &'static str,
    ) -> Self {
        match e.kind() {
            ErrorKind::InvalidRequest => match e.invalid_param() {
                Some((param, reason)) => {
                    let name = param_name(param);
                    Self::InvalidRequest {
                        message: format!("{name} {reason}"),
                        param: Some(name.to_owned()),
                    }
                }
                None => Self::invalid(e.to_string()),
            },
            ErrorKind::ContextLength => Self::ContextLength {
                message: e.to_string(),
            },
            ErrorKind::Busy => Self::RateLimited {
                message: "the model is busy: every generation slot is taken and the queue is full"
                    .into(),
                retry_after: e.retry_after().map_or(1, retry_after_seconds),
            },
            ErrorKind::Unavailable => Self::Unavailable {
                message: "the model's engine is restarting; try again shortly".into(),
                retry_after: Some(e.retry_after().map_or(1, retry_after_seconds)),
            },
            ErrorKind::Failed => Self::Internal {
                detail: e.to_string(),
            },
        }
    }
}

impl From<airlock_engine::Error> for ApiError {
    /// An engine failure, naming parameters as OpenAI's API does.
    fn from(e: airlock_engine::Error) -> Self {
        Self::from_engine(e, Param::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_carry_retry_after_in_both_dialects() {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let response = ApiError::RateLimited {
                message: "full".into(),
                retry_after: 2,
            }
            .into_response_for(dialect);
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(
                response.headers().get(header::RETRY_AFTER),
                Some(&HeaderValue::from(2u64))
            );
        }
    }

    #[test]
    fn internal_details_never_reach_the_client() {
        let err = ApiError::Internal {
            detail: "/var/lib/airlock/blobs/ab: disk on fire".into(),
        };
        assert!(!err.message().contains("disk"));
        assert!(err.detail().contains("disk"));
        let err = ApiError::Unauthenticated {
            reason: "key 0123 revoked".into(),
        };
        assert!(!err.message().contains("revoked"));
    }
}
