//! Shared helpers: run the binary, build synthetic model sources, tamper with bundles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlock_testkit::gguf::{GgufBuilder, MetaValue};
use airlock_testkit::safetensors::{Tensor, build};

pub fn airlock() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("AIRLOCK_KEY_PASSPHRASE");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run airlock");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    }
}

/// A scratch directory with a publisher key pair and a second, independent one.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self::with_dir(tempfile::tempdir().unwrap())
    }

    /// A workspace beneath `parent`, for fixtures shared by several tests of one process
    /// (statics are never dropped, so these stay under the target directory, not in /tmp).
    pub fn new_in(parent: &Path) -> Self {
        std::fs::create_dir_all(parent).unwrap();
        Self::with_dir(tempfile::tempdir_in(parent).unwrap())
    }

    fn with_dir(dir: tempfile::TempDir) -> Self {
        let ws = Self { dir };
        for name in ["publisher", "cosigner", "stranger"] {
            run(airlock()
                .args(["keygen", "--name", name, "-o"])
                .arg(ws.keys()))
            .ok();
        }
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn keys(&self) -> PathBuf {
        self.path("keys")
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.key"))
    }

    pub fn public(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.pub"))
    }

    /// A small Hugging Face-style safetensors model directory.
    pub fn safetensors_model(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(
            dir.join("model.safetensors"),
            build(&[
                Tensor::f32("embeddings.weight", &[16, 8]),
                Tensor::f32("pooler.dense.weight", &[8, 8]),
            ]),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"architectures":["BertModel"],"max_position_embeddings":512}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("tokenizer.json"),
            r#"{"version":"1.0","model":{"type":"WordPiece"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("modules.json"), "[]").unwrap();
        std::fs::write(
            dir.join("1_Pooling/config.json"),
            r#"{"pooling_mode_mean_tokens":true}"#,
        )
        .unwrap();
        std::fs::write(dir.join("README.md"), "# Tiny test model\n").unwrap();
        std::fs::write(dir.join("LICENSE"), "Apache License 2.0\n").unwrap();
        dir
    }

    /// A small GGUF chat model file.
    pub fn gguf_model(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let bytes = GgufBuilder::new()
            .meta("general.architecture", MetaValue::Str("llama".into()))
            .meta("llama.context_length", MetaValue::U32(4096))
            .meta("general.file_type", MetaValue::U32(3))
            .meta(
                "tokenizer.chat_template",
                MetaValue::Str("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
            )
            .tensor("token_embd.weight", &[64, 4], 3)
            .tensor("output_norm.weight", &[64], 0)
            .build();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Packs `src` as `name` 1.0.0 with the publisher key; returns the bundle path.
    pub fn pack(&self, src: &Path, out: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(out);
        run(airlock()
            .arg("pack")
            .arg(src)
            .args([
                "--name",
                "tiny",
                "--version",
                "1.0.0",
                "--license",
                "Apache-2.0",
                "--key",
            ])
            .arg(self.key("publisher"))
            .arg("-o")
            .arg(&out)
            .args(extra))
        .ok();
        out
    }

    /// Co-signs `bundle` with the named key.
    pub fn cosign(&self, bundle: &Path, key: &str) -> Run {
        run(airlock()
            .arg("sign")
            .arg(bundle)
            .arg("--key")
            .arg(self.key(key)))
    }

    /// `airlock verify BUNDLE --trust publisher --json` plus `extra`.
    pub fn verify(&self, bundle: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
        let mut cmd = airlock();
        cmd.arg("verify").arg(bundle).arg("--json");
        if extra.is_empty() {
            cmd.arg("--trust").arg(self.public("publisher"));
        }
        for a in extra {
            cmd.arg(a);
        }
        run(&mut cmd)
    }

    /// Unpacks a bundle tar into a directory with GNU tar.
    pub fn unpack(&self, bundle: &Path, dir: &str) -> PathBuf {
        let out = self.path(dir);
        std::fs::create_dir_all(&out).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        out
    }
}

/// Asserts that verification failed (exit 1) with the given error kind and a one-line reason.
#[track_caller]
pub fn assert_refused(run: &Run, kind: &str) {
    assert_eq!(
        run.code, 1,
        "expected exit 1 for {kind}\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let json = run.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["kind"], kind, "wrong kind; error: {}", json["error"]);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "reason must be one line: {:?}",
        run.stderr
    );
}

/// Asserts that a command (pack, sign...) failed with exit 1 and one line naming `needle`.
#[track_caller]
pub fn assert_failed_with(run: &Run, needle: &str) {
    assert_eq!(
        run.code, 1,
        "expected exit 1\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "reason must be one line: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "{:?} does not mention {needle:?}",
        run.stderr
    );
}

/// Flips one bit at `offset` in the file at `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

/// Data offset of `name` in a bundle tar.
pub fn tar_offset(bundle: &Path, name: &str) -> u64 {
    let mut f = std::fs::File::open(bundle).unwrap();
    let len = f.metadata().unwrap().len();
    let entries =
        airlock_bundle::tar::index(&mut f, len, &airlock_bundle::Limits::default()).unwrap();
    entries
        .iter()
        .find(|e| e.path.as_str() == name)
        .unwrap()
        .data_offset
}

/// The cache that `scripts/fetch-models.sh` and `scripts/setup-test-tools.sh` fill.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AIRLOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/airlock")
        })
}

/// The OpenSSF reference tool, installed by `scripts/setup-test-tools.sh`.
pub fn model_signing() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_MODEL_SIGNING")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("tools-venv/bin/model_signing"));
    assert!(
        path.exists(),
        "{} not found: run scripts/setup-test-tools.sh (or scripts/test.sh, which runs it)",
        path.display()
    );
    path
}

/// llama.cpp's `llama-server`, built by `scripts/build-llama-cpp.sh` (which `scripts/test.sh`
/// runs first); `AIRLOCK_LLAMA_SERVER` names another.
pub fn llama_server() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llama-cpp-python-0.3.36/build/bin/llama-server"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/build-llama-cpp.sh (scripts/test.sh does) or set AIRLOCK_LLAMA_SERVER",
        path.display()
    );
    path
}

/// The default models, fetched by `scripts/fetch-models.sh`.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("AIRLOCK_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"));
    assert!(
        dir.join("smollm2").is_dir() && dir.join("all-minilm-l6-v2").is_dir(),
        "{} has no models: run scripts/fetch-models.sh",
        dir.display()
    );
    dir
}

/// `model_signing verify key DIR --signature DIR/model.sig --public_key PUB`.
pub fn oms_verify(dir: &Path, public: &Path) -> Run {
    run(Command::new(model_signing())
        .args(["verify", "key"])
        .arg(dir)
        .arg("--signature")
        .arg(dir.join("model.sig"))
        .arg("--public_key")
        .arg(public))
}

/// `sha256sum -c SHA256SUMS` passes in `dir`.
#[track_caller]
pub fn assert_sha256sums_pass(dir: &Path) {
    let status = Command::new("sha256sum")
        .args(["--quiet", "-c", "SHA256SUMS"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "sha256sum -c SHA256SUMS failed in {}",
        dir.display()
    );
}

/// Runs `statements` on the SQLite database at `db` with Python's `sqlite3` module: the hand
/// edit of someone who can write the data directory, made outside airlock.
pub fn sql(db: &Path, statements: &str) {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\nc.close()\n")
        .arg(db)
        .arg(statements));
    assert_eq!(out.code, 0, "sql on {}: {}", db.display(), out.stderr);
}

/// The first column of every row `query` returns from the SQLite database at `db`, as text.
pub fn sql_column(db: &Path, query: &str) -> Vec<String> {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nfor row in c.execute(sys.argv[2]):\n    print(row[0])\n")
        .arg(db)
        .arg(query));
    assert_eq!(out.code, 0, "sql on {}: {}", db.display(), out.stderr);
    out.stdout.lines().map(str::to_owned).collect()
}
