//! HTTP/1.1 to an engine process over its unix socket: streamed requests for answers
//! (async, on the server's runtime) and health checks (blocking, on the supervisor's thread).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

/// Most bytes of an error body read from an engine process.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Where an engine process listens, and the secret it wants.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) socket: PathBuf,
    pub(crate) secret: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("Endpoint")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Sends `body` to `path` on a fresh connection and returns the response head with its
    /// body unread. Dropping the body closes the connection, which the engine process takes
    /// as a cancellation.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, String> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.socket.display()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        // The connection is driven beside the request; it ends when the response body is
        // read to its end or dropped.
        drop(tokio::spawn(connection));
        let request = Request::post(path)
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("the engine process did not answer: {e}"))
    }
}

/// Reads an error response's body, at most [`MAX_ERROR_BODY`] bytes of it.
pub(crate) async fn error_body(response: Response<Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET /health` over the socket, blocking up to `timeout`: the status code, or why there
/// is none.
pub(crate) fn health(socket: &Path, timeout: Duration) -> Result<u16, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let line = std::str::from_utf8(&head[..read]).map_err(|_| "not HTTP".to_owned())?;
    line.strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
}
