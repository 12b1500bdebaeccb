//! The supervisor thread of one engine process: start it on verified files, wait until it is
//! ready, watch it (exit and health), and start it again with backoff when it goes down,
//! verifying its files anew before every start.
//!
//! Every start happens on this one long-lived thread, because the parent-death signal that
//! keeps an engine process from outliving airlock fires when the *thread* that started it ends.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_engine::{EngineState, ModelFiles};

use crate::http::{self, Endpoint};
use crate::launch::{self, Launch};
use crate::{Error, Hooks, ProcessEvent, ProcessSpec};

/// Lines of the process's output kept for error messages.
const LOG_LINES: usize = 40;
/// Longest log line kept.
const LOG_LINE_BYTES: usize = 512;
/// How often the process is checked for having exited.
const POLL: Duration = Duration::from_millis(50);
/// How often a ready process's health is checked, and how long an answer may take.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Failed health checks in a row after which a process is taken for hung and restarted.
const HEALTH_FAILURES: u32 = 3;
/// The first wait before a restart; it doubles with each failure in a row, up to the most.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MOST: Duration = Duration::from_secs(30);
/// A process that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How long a process has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the API side reads about the process.
#[derive(Debug)]
pub(crate) struct Shared {
    live: Mutex<Live>,
    /// Wakes the supervisor's sleeps when it must stop.
    stopping: Condvar,
    pub(crate) restarts: AtomicU64,
    pub(crate) running: AtomicUsize,
}

#[derive(Debug)]
struct Live {
    state: EngineState,
    endpoint: Option<Endpoint>,
    pid: Option<u32>,
    /// When the process is expected to take requests again.
    back_at: Option<Instant>,
    stop: bool,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            live: Mutex::new(Live {
                state: EngineState::Starting,
                endpoint: None,
                pid: None,
                back_at: None,
                stop: false,
            }),
            stopping: Condvar::new(),
            restarts: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoint of a ready process, or why there is none and when to ask again.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, (String, Duration)> {
        let live = self.live();
        match (&live.state, &live.endpoint) {
            (EngineState::Ready, Some(endpoint)) => Ok(endpoint.clone()),
            (state, _) => {
                let reason = match state {
                    EngineState::Restarting { reason } | EngineState::Failed { reason } => {
                        reason.clone()
                    }
                    _ => "starting".to_owned(),
                };
                let wait = live.back_at.map_or(BACKOFF_FIRST, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                Err((reason, wait.max(Duration::from_secs(1))))
            }
        }
    }

    pub(crate) fn state(&self) -> (EngineState, Option<u32>) {
        let live = self.live();
        (live.state.clone(), live.pid)
    }

    fn set(&self, state: EngineState, endpoint: Option<Endpoint>, pid: Option<u32>) {
        let mut live = self.live();
        live.state = state;
        live.endpoint = endpoint;
        live.pid = pid;
    }

    fn expect_back(&self, at: Instant) {
        self.live().back_at = Some(at);
    }

    /// Asks the supervisor to stop its process and end.
    pub(crate) fn stop(&self) {
        self.live().stop = true;
        self.stopping.notify_all();
    }

    fn stopped(&self) -> bool {
        self.live().stop
    }

    /// Sleeps `wait` unless asked to stop first; returns whether it was asked.
    fn sleep(&self, wait: Duration) -> bool {
        let live = self.live();
        let (live, _) = self
            .stopping
            .wait_timeout_while(live, wait, |l| !l.stop)
            .unwrap_or_else(PoisonError::into_inner);
        live.stop
    }
}

/// The last lines a process wrote to stdout and stderr.
#[derive(Debug, Default, Clone)]
struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let tail = self.clone();
        // The reader ends with the process's pipe.
        let _ = std::thread::Builder::new()
            .name("engine log".into())
            .spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { return };
                    let mut text = String::from_utf8_lossy(&line).into_owned();
                    if text.len() > LOG_LINE_BYTES {
                        let mut end = LOG_LINE_BYTES;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.truncate(end);
                    }
                    let mut lines = tail.0.lock().unwrap_or_else(PoisonError::into_inner);
                    if lines.len() == LOG_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(text);
                }
            });
    }

    /// The last `n` lines, joined.
    fn last(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = lines.len().saturating_sub(n);
        lines
            .iter()
            .skip(skip)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// A started process and what goes with it.
struct Running {
    /// What airlock started: the keeper of the engine's box.
    child: Child,
    /// The engine itself (the child, where there is no box).
    engine_pid: u32,
    log: LogTail,
    /// Holds the socket and the model links; removed when the process is gone.
    _launch: Launch,
}

impl Running {
    /// The engine process's id, as reported and audited.
    fn pid(&self) -> u32 {
        self.engine_pid
    }

    /// SIGTERM, then SIGKILL if it has not gone within the grace period.
    fn stop(mut self) -> Option<ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// Starts the process and waits until it answers its health check.
fn start(spec: &ProcessSpec, files: &ModelFiles) -> Result<(Running, Endpoint), Error> {
    let mut launch = launch::prepare(spec, files).map_err(Error::Launch)?;
    let mut child = launch
        .command
        .spawn()
        .map_err(|e| Error::Launch(format!("cannot start {}: {e}", spec.binary.display())))?;
    let log = LogTail::default();
    if let Some(out) = child.stdout.take() {
        log.follow(out);
    }
    if let Some(err) = child.stderr.take() {
        log.follow(err);
    }
    let endpoint = Endpoint {
        socket: launch.socket.clone(),
        secret: launch.secret.clone(),
    };
    let engine_pid = launch.contained.engine_pid(child.id());
    let mut running = Running {
        child,
        engine_pid,
        log,
        _launch: launch,
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            // Let the log readers take the last lines.
            std::thread::sleep(POLL);
            return Err(Error::Exited {
                status: describe(status),
                log: running.log.last(8),
            });
        }
        if endpoint.socket.exists() && http::health(&endpoint.socket, HEALTH_EVERY) == Ok(200) {
            return Ok((running, endpoint));
        }
        if started.elapsed() > spec.startup_timeout {
            let log = running.log.last(8);
            running.stop();
            return Err(Error::NotReady {
                seconds: spec.startup_timeout.as_secs(),
                log,
            });
        }
        std::thread::sleep(POLL * 2);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) if signal == rustix::process::Signal::SYS.as_raw() => format!(
            "killed by signal {signal} (SIGSYS: the seccomp filter ended it for a system call it may not make)"
        ),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// How the watch of a running process ended.
enum Watch {
    Stop,
    Down(String),
}

/// Watches a ready process until it exits, stops answering health checks, or the
/// supervisor is asked to stop.
fn watch(shared: &Shared, running: &mut Running, endpoint: &Endpoint) -> Watch {
    let mut next_check = Instant::now() + HEALTH_EVERY;
    let mut failures = 0;
    loop {
        if shared.sleep(POLL) {
            return Watch::Stop;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            return Watch::Down(describe(status));
        }
        if Instant::now() < next_check {
            continue;
        }
        next_check = Instant::now() + HEALTH_EVERY;
        match http::health(&endpoint.socket, HEALTH_EVERY) {
            Ok(200) => failures = 0,
            outcome => {
                failures += 1;
                if failures >= HEALTH_FAILURES {
                    let why = match outcome {
                        Ok(code) => format!("status {code}"),
                        Err(e) => e,
                    };
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                    return Watch::Down(format!("stopped answering health checks ({why}); killed"));
                }
            }
        }
    }
}

/// The supervisor thread: the first start's outcome goes to `ready`; after that, starts
/// again until asked to stop.
pub(crate) fn supervise(
    shared: &Shared,
    spec: &ProcessSpec,
    first: ModelFiles,
    hooks: &Hooks,
    ready: SyncSender<Result<(), Error>>,
) {
    let mut ready = Some(ready);
    let mut files = Some(first);
    let mut failures: u32 = 0;
    loop {
        if shared.stopped() {
            return;
        }
        let verified = match files.take() {
            Some(files) => Ok(files),
            None => (hooks.verify)(),
        };
        let outcome = match verified {
            Err(reason) => {
                (hooks.on_event)(ProcessEvent::Refused {
                    reason: reason.clone(),
                });
                shared.set(EngineState::Failed { reason }, None, None);
                Err(None)
            }
            Ok(files) => {
                let attempt = Instant::now();
                match start(spec, &files) {
                    Ok((running, endpoint)) => Ok((running, endpoint, attempt.elapsed())),
                    Err(error) => Err(Some(error)),
                }
            }
        };
        let (mut running, endpoint, took) = match outcome {
            Ok(started) => started,
            Err(error) => {
                if let Some(error) = error {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(error));
                        return;
                    }
                    let reason = error.to_string();
                    (hooks.on_event)(ProcessEvent::Failed {
                        reason: reason.clone(),
                    });
                    shared.set(EngineState::Restarting { reason }, None, None);
                }
                let wait = backoff(failures);
                failures += 1;
                shared.expect_back(Instant::now() + wait);
                if shared.sleep(wait) {
                    return;
                }
                continue;
            }
        };
        let pid = running.pid();
        shared.set(EngineState::Ready, Some(endpoint.clone()), Some(pid));
        (hooks.on_event)(ProcessEvent::Started {
            pid,
            seconds: took.as_secs_f64(),
        });
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let up = Instant::now();
        let reason = match watch(shared, &mut running, &endpoint) {
            Watch::Stop => {
                let status = running.stop();
                (hooks.on_event)(ProcessEvent::Stopped {
                    pid,
                    status: status.map_or_else(|| "unknown".into(), describe),
                });
                shared.set(
                    EngineState::Failed {
                        reason: "stopped".into(),
                    },
                    None,
                    None,
                );
                return;
            }
            Watch::Down(reason) => reason,
        };
        // Let the log readers take the last lines.
        std::thread::sleep(POLL);
        let log = running.log.last(8);
        drop(running);
        if up.elapsed() >= STABLE {
            failures = 0;
        }
        let wait = backoff(failures);
        failures += 1;
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        shared.expect_back(Instant::now() + wait + took);
        shared.set(
            EngineState::Restarting {
                reason: reason.clone(),
            },
            None,
            None,
        );
        (hooks.on_event)(ProcessEvent::Exited { pid, reason, log });
        if shared.sleep(wait) {
            return;
        }
    }
}

/// The wait before the next start after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1 << failures.min(5))
        .min(BACKOFF_MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_one_second_up_to_thirty() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_process_that_is_not_ready_is_refused_with_a_time_to_come_back() {
        let shared = Shared::new();
        assert!(shared.endpoint().is_err());
        shared.expect_back(Instant::now() + Duration::from_secs(7));
        shared.set(
            EngineState::Restarting {
                reason: "killed by signal 9".into(),
            },
            None,
            None,
        );
        let (reason, wait) = shared.endpoint().unwrap_err();
        assert_eq!(reason, "killed by signal 9");
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(7));
        let endpoint = Endpoint {
            socket: "/run/x.sock".into(),
            secret: "s".into(),
        };
        shared.set(EngineState::Ready, Some(endpoint), Some(42));
        assert!(shared.endpoint().is_ok());
        assert_eq!(shared.state(), (EngineState::Ready, Some(42)));
    }

    #[test]
    fn a_stop_wakes_a_sleeping_supervisor_at_once() {
        let shared = Arc::new(Shared::new());
        let sleeper = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let started = Instant::now();
                (shared.sleep(Duration::from_secs(60)), started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        shared.stop();
        let (stopped, slept) = sleeper.join().unwrap();
        assert!(stopped);
        assert!(slept < Duration::from_secs(5));
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines_cut_to_length() {
        let tail = LogTail::default();
        let mut text = String::new();
        for n in 0..100 {
            text.push_str(&format!("line {n}\n"));
        }
        text.push_str(&"x".repeat(5000));
        tail.follow(std::io::Cursor::new(text.into_bytes()));
        std::thread::sleep(Duration::from_millis(200));
        let last = tail.last(2);
        assert!(last.starts_with("line 99 | xxx"), "{last}");
        assert_eq!(last.len(), "line 99 | ".len() + LOG_LINE_BYTES);
    }
}
