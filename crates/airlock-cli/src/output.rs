//! Everything the binary prints: results, errors, progress bars.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use airlock_bundle::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Writes `text` to stdout; a closed pipe is reported as an error for `main` to swallow.
pub(crate) fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes a JSON value and a newline to stdout.
pub(crate) fn json(value: &serde_json::Value) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Prints the error and its causes on one line to stderr.
pub(crate) fn error_line(err: &anyhow::Error) {
    let line = format!("{err:#}").replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "airlock: error: {line}");
}

/// 1 when a bundle or input failed a check or was refused, 2 for usage and I/O problems.
pub(crate) fn exit_code(err: &anyhow::Error) -> ExitCode {
    let refused = err.chain().any(|e| {
        e.downcast_ref::<airlock_bundle::Error>()
            .is_some_and(airlock_bundle::Error::is_verification_failure)
            || e.downcast_ref::<airlock_registry::Error>()
                .is_some_and(airlock_registry::Error::is_refusal)
            || e.downcast_ref::<airlock_audit::Error>()
                .is_some_and(airlock_audit::Error::is_integrity_failure)
            || e.downcast_ref::<airlock_transfer::Error>()
                .is_some_and(airlock_transfer::Error::is_transfer_failure)
            || e.downcast_ref::<airlock_engine::Error>()
                .is_some_and(airlock_engine::Error::is_model_failure)
    });
    ExitCode::from(if refused { 1 } else { 2 })
}

/// Stable snake_case kind of the error in `err`, for `--json` output.
pub(crate) fn error_kind(err: &anyhow::Error) -> &'static str {
    for e in err.chain() {
        if let Some(e) = e.downcast_ref::<airlock_registry::Error>() {
            return e.kind();
        }
        if let Some(e) = e.downcast_ref::<airlock_bundle::Error>() {
            return e.kind();
        }
        if let Some(e) = e.downcast_ref::<airlock_audit::Error>() {
            return if e.is_integrity_failure() {
                "audit_integrity"
            } else {
                "audit"
            };
        }
    }
    "error"
}

/// With `--json`, a failure is also printed to stdout as `{"ok": false, ...}` so scripts
/// need not parse stderr; the exit code is the same either way.
pub(crate) fn json_failure(json: bool, err: anyhow::Error) -> anyhow::Result<ExitCode> {
    if !json {
        return Err(err);
    }
    self::json(&serde_json::json!({
        "ok": false,
        "kind": error_kind(&err),
        "error": format!("{err:#}"),
    }))?;
    error_line(&err);
    Ok(exit_code(&err))
}

/// Progress bars on stderr when it is a terminal; nothing otherwise.
pub(crate) struct Bars {
    bar: ProgressBar,
}

impl Bars {
    pub(crate) fn new() -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        Self { bar }
    }
}

impl Progress for Bars {
    fn begin(&self, phase: &str, total: u64) {
        let style = ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_message(phase.to_owned());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn end(&self) {
        self.bar.disable_steady_tick();
        self.bar.finish_and_clear();
    }
}
