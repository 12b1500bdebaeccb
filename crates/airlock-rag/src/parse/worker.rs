//! Parsing in a separate process, so that a parser that panics, aborts, loops or runs out of
//! memory fails its document alone and the ingest goes on.
//!
//! The parent ([`Parser::isolated`]) starts a worker (the `airlock` binary's hidden
//! `parse-worker` command, which calls [`serve`]) and sends it one request per line on its
//! standard input; the worker limits its own memory and answers one line per request. A
//! worker that dies or takes too long is killed and replaced; its document fails with what
//! happened. [`Parser::in_process`] parses in the calling process (tests, tools), catching
//! panics but not the rest.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Format, Item, ParseLimits};

/// Memory a worker may map: parsers of a 64 MiB file have room, a bomb does not.
const WORKER_MEMORY: u64 = 4 << 30;

/// What the worker is asked to parse.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Input {
    /// A file it reads itself (after checking its size).
    Path(PathBuf),
    /// Bytes read by the parent (a git blob), base64.
    Bytes(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    input: Input,
    format: Format,
    limits: ParseLimits,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Items(Vec<Item>),
    Error(String),
}

/// What to parse.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A file on disk.
    File(&'a Path),
    /// Bytes already read.
    Bytes(&'a [u8]),
}

/// Parses documents, in this process or in a worker process.
#[derive(Debug)]
pub struct Parser {
    mode: Mode,
    timeout: Duration,
}

#[derive(Debug)]
enum Mode {
    InProcess,
    Isolated {
        program: PathBuf,
        args: Vec<OsString>,
        worker: Option<Worker>,
    },
}

#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Parser {
    /// Parses in this process: panics are caught, crashes are not.
    pub fn in_process() -> Self {
        Self {
            mode: Mode::InProcess,
            timeout: Duration::from_secs(120),
        }
    }

    /// Parses in worker processes started as `program args...` (which must call [`serve`]).
    pub fn isolated(program: PathBuf, args: Vec<OsString>) -> Self {
        Self {
            mode: Mode::Isolated {
                program,
                args,
                worker: None,
            },
            timeout: Duration::from_secs(120),
        }
    }

    /// The same parser, giving up on a document after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Parses `source` as `format`; the error is one line naming what went wrong.
    pub fn parse(
        &mut self,
        source: Source<'_>,
        format: Format,
        limits: &ParseLimits,
    ) -> Result<Vec<Item>, String> {
        match &mut self.mode {
            Mode::InProcess => {
                let bytes = match source {
                    Source::File(path) => read_limited(path, limits)?,
                    Source::Bytes(bytes) => bytes.to_vec(),
                };
                catching(|| super::parse(&bytes, format, limits))
            }
            Mode::Isolated {
                program,
                args,
                worker,
            } => {
                let input = match source {
                    Source::File(path) => Input::Path(path.to_owned()),
                    Source::Bytes(bytes) => {
                        Input::Bytes(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                };
                let request = Request {
                    input,
                    format,
                    limits: *limits,
                };
                let line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
                if worker.is_none() {
                    *worker = Some(start(program, args)?);
                }
                let Some(running) = worker.as_mut() else {
                    return Err("the parser process did not start".into());
                };
                let answer = ask(running, &line, self.timeout);
                if answer.is_err() {
                    // Whatever happened to it, the next document gets a fresh worker.
                    *worker = None;
                }
                answer
            }
        }
    }
}

fn start(program: &Path, args: &[OsString]) -> Result<Worker, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the parser process {}: {e}", program.display()))?;
    let stdin = child
        .stdin
        .take()
        .ok_or("the parser process has no stdin")?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the parser process has no stdout")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("parse-worker reader".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start a reader thread: {e}"))?;
    Ok(Worker {
        child,
        stdin,
        lines,
    })
}

fn ask(worker: &mut Worker, line: &str, timeout: Duration) -> Result<Vec<Item>, String> {
    let sent = writeln!(worker.stdin, "{line}").and_then(|()| worker.stdin.flush());
    let answer = match sent {
        Ok(()) => worker.lines.recv_timeout(timeout),
        Err(_) => Err(RecvTimeoutError::Disconnected),
    };
    match answer {
        Ok(Ok(line)) => match serde_json::from_str(&line) {
            Ok(Response::Items(items)) => Ok(items),
            Ok(Response::Error(reason)) => Err(reason),
            Err(e) => Err(format!("the parser process answered nonsense: {e}")),
        },
        Ok(Err(e)) => Err(format!("the parser process could not be read: {e}")),
        Err(RecvTimeoutError::Timeout) => {
            let _ = worker.child.kill();
            Err(format!(
                "parsing took longer than {} s and was stopped",
                timeout.as_secs()
            ))
        }
        Err(RecvTimeoutError::Disconnected) => {
            let status = worker.child.wait().ok();
            Err(
                match status.and_then(|s| {
                    use std::os::unix::process::ExitStatusExt as _;
                    s.signal()
                }) {
                    Some(signal) => format!("the parser crashed (killed by signal {signal})"),
                    None => "the parser crashed".into(),
                },
            )
        }
    }
}

/// Reads a file after checking that its size is within the limit.
fn read_limited(path: &Path, limits: &ParseLimits) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    if size > limits.max_file_bytes {
        return Err(super::over("the file", size, limits.max_file_bytes));
    }
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

/// Runs `parse`, turning a panic into an error.
fn catching(parse: impl FnOnce() -> Result<Vec<Item>, String>) -> Result<Vec<Item>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(format!(
            "the parser failed on it ({})",
            what.lines().next().unwrap_or("")
        ))
    })
}

/// The worker's side: limits its own memory, then answers one line per request line on
/// standard input until it closes.
pub fn serve() -> std::io::Result<()> {
    let limit = rustix::process::Rlimit {
        current: Some(WORKER_MEMORY),
        maximum: Some(WORKER_MEMORY),
    };
    // Without the limit a bomb could take the machine's memory; the worker refuses to run.
    rustix::process::setrlimit(rustix::process::Resource::As, limit)
        .map_err(std::io::Error::from)?;
    // Panics are reported in the answer; the default hook would print them too.
    std::panic::set_hook(Box::new(|_| {}));
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("a bad request: {e}")),
            Ok(request) => {
                let bytes = match request.input {
                    Input::Path(path) => read_limited(&path, &request.limits),
                    Input::Bytes(b64) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("a bad request: {e}")),
                };
                match bytes.and_then(|bytes| {
                    catching(|| super::parse(&bytes, request.format, &request.limits))
                }) {
                    Ok(items) => Response::Items(items),
                    Err(reason) => Response::Error(reason),
                }
            }
        };
        let text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_parser_fails_its_document_with_a_line() {
        let err = catching(|| panic!("index out of range")).unwrap_err();
        assert_eq!(err, "the parser failed on it (index out of range)");
    }

    #[test]
    fn in_process_parsing_checks_the_size_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.txt");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let err = Parser::in_process()
            .parse(Source::File(&big), Format::Text, &ParseLimits::default())
            .unwrap_err();
        assert_eq!(err, "the file is 1.0 GiB, over the 64.0 MiB limit");
    }
}
