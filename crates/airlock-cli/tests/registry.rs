//! The isolated side: import against the trust policy, four-eyes approval, tags, removal.
//! Every refusal gives one line, one audit entry naming the rule, and nothing new in `ls`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Run, Workspace, airlock, flip_byte, run, sql, sql_column, tar_offset};

/// A workspace with an initialised registry that trusts `publisher` to sign and
/// `approver` to approve.
pub struct Site {
    pub ws: Workspace,
    pub data: PathBuf,
}

impl Site {
    pub fn new() -> Self {
        let ws = Workspace::new();
        run(airlock()
            .args(["keygen", "--name", "approver", "-o"])
            .arg(ws.keys()))
        .ok();
        let data = ws.path("data");
        let mut site = Self { ws, data };
        site.reset("data");
        site
    }

    /// Switches to a new, initialised data directory with the same keys trusted.
    pub fn reset(&mut self, dir: &str) {
        self.data = self.ws.path(dir);
        self.cmd(&["init"]).ok();
        self.trust("--publisher", "publisher");
        self.trust("--approver", "approver");
    }

    pub fn trust(&self, role: &str, key: &str) {
        let public = self.ws.public(key);
        self.cmd(&["trust", "add", role, public.to_str().unwrap()])
            .ok();
    }

    /// Runs `airlock --data DATA ARGS...`.
    /// Where the registry keeps the blob of the file of `reference` named `path`.
    pub fn blob_path(&self, reference: &str, path: &str) -> PathBuf {
        let shown = self.cmd(&["show", reference, "--json"]).ok().json();
        let files = shown["files"].as_array().unwrap();
        let file = files.iter().find(|f| f["path"] == path).unwrap();
        let hex = file["sha256"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        self.data.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    pub fn cmd(&self, args: &[&str]) -> Run {
        run(airlock().arg("--data").arg(&self.data).args(args))
    }

    pub fn import(&self, bundle: &Path) -> Run {
        run(airlock()
            .arg("--data")
            .arg(&self.data)
            .args(["import", "--json"])
            .arg(bundle))
    }

    pub fn approve(&self, reference: &str, key: &str) -> Run {
        let key = self.ws.key(key);
        self.cmd(&[
            "approve",
            reference,
            "--key",
            key.to_str().unwrap(),
            "--json",
        ])
    }

    /// An exception for `reference`, signed by `key`, for one day.
    pub fn allow_downgrade(&self, reference: &str, key: &str) -> Run {
        let key = self.ws.key(key);
        self.cmd(&[
            "allow-downgrade",
            reference,
            "--key",
            key.to_str().unwrap(),
            "--expires",
            "1day",
            "--reason",
            "the newer version regressed on the eval suite",
        ])
    }

    pub fn ls(&self) -> Vec<Value> {
        self.cmd(&["ls", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The last audit entries, oldest first.
    pub fn audit_tail(&self, n: usize) -> Vec<Value> {
        self.cmd(&["audit", "tail", "-n", &n.to_string(), "--json"])
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Packs a tiny safetensors model as `tiny:VERSION`, signed by `key`.
    pub fn bundle(&self, label: &str, version: &str, key: &str, extra: &[&str]) -> PathBuf {
        self.bundle_named("tiny", label, version, key, extra)
    }

    /// Packs a tiny safetensors model as `NAME:VERSION`, signed by `key`.
    pub fn bundle_named(
        &self,
        name: &str,
        label: &str,
        version: &str,
        key: &str,
        extra: &[&str],
    ) -> PathBuf {
        let src = self.ws.safetensors_model(&format!("src-{label}"));
        // Make every source distinct, so each bundle has its own digest.
        std::fs::write(src.join("README.md"), format!("# model {label}\n")).unwrap();
        let out = self.ws.path(&format!("{label}.airlock"));
        run(airlock()
            .arg("pack")
            .arg(&src)
            .args(["--name", name, "--version", version, "--key"])
            .arg(self.ws.key(key))
            .arg("-o")
            .arg(&out)
            .args(if extra.contains(&"--license") {
                &[][..]
            } else {
                &["--license", "Apache-2.0"][..]
            })
            .args(extra))
        .ok();
        out
    }

    /// Asserts a refusal: exit 1, one line on stderr, an audit entry for `action` with
    /// `rule`, and the listing unchanged.
    #[track_caller]
    pub fn assert_refused(&self, run: &Run, action: &str, rule: &str, listing_before: &[Value]) {
        assert_eq!(
            run.code, 1,
            "expected a refusal\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "the reason must be one line: {:?}",
            run.stderr
        );
        let last = &self.audit_tail(1)[0];
        assert_eq!(last["action"], action, "{last}");
        assert_eq!(last["outcome"], "refused", "{last}");
        assert_eq!(last["details"]["rule"], rule, "{last}");
        assert!(
            run.stderr.contains(last["reason"].as_str().unwrap()),
            "stderr and the audit entry give the same reason"
        );
        assert_eq!(self.ls(), listing_before, "nothing new in ls");
    }
}

#[test]
fn import_approve_tag_show_is_the_happy_path_and_each_step_is_audited() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    let imported = site.import(&bundle).ok().json();
    assert_eq!(imported["state"], "quarantined");
    assert_eq!(site.ls()[0]["state"], "quarantined");
    site.approve("tiny:1.0.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.0.0", "prod"]).ok();
    let shown = site.cmd(&["show", "tiny:prod", "--json"]).ok().json();
    assert_eq!(shown["state"], "approved");
    assert_eq!(shown["tags"], serde_json::json!(["prod"]));
    assert_eq!(shown["digest"], imported["digest"]);
    assert_eq!(shown["approvals"].as_array().unwrap().len(), 1);
    let digest = shown["digest"].as_str().unwrap();
    let by_digest = site
        .cmd(&["show", &format!("tiny@{digest}"), "--json"])
        .ok()
        .json();
    assert_eq!(by_digest["version"], "1.0.0");
    let actions: Vec<String> = site
        .audit_tail(3)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["import", "approve", "tag"]);
    // Importing the same bundle again changes nothing.
    let again = site.import(&bundle).ok().json();
    assert_eq!(again["already_present"], true);
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
}

#[test]
fn an_untrusted_signer_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "stranger", &[]);
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "untrusted_signer", &[]);
}

#[test]
fn an_unmet_signature_threshold_is_refused() {
    let site = Site::new();
    site.trust("--publisher", "cosigner");
    let policy = site.data.join("policy.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("threshold = 1", "threshold = 2")).unwrap();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "threshold_not_met", &[]);
    // The hand edit of the policy was itself recorded.
    assert!(
        site.audit_tail(3)
            .iter()
            .any(|e| e["action"] == "policy.changed")
    );
    // With the co-signature the same bundle goes in.
    site.ws.cosign(&bundle, "cosigner").ok();
    site.import(&bundle).ok();
}

#[test]
fn a_licence_the_policy_does_not_allow_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &["--license", "GPL-3.0-only"]);
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "license", &[]);
    assert!(run.stderr.contains("GPL-3.0-only"));
}

#[test]
fn a_tampered_blob_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    flip_byte(&bundle, tar_offset(&bundle, "model.safetensors") + 200);
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "chunk_mismatch", &[]);
    assert!(run.stderr.contains("model.safetensors"));
}

#[test]
fn an_older_version_than_the_highest_imported_is_a_rollback_and_refused() {
    let site = Site::new();
    let newer = site.bundle("new", "1.1.0", "publisher", &[]);
    let older = site.bundle("old", "1.0.0", "publisher", &[]);
    site.import(&newer).ok();
    let before = site.ls();
    let run = site.import(&older);
    site.assert_refused(&run, "import", "rollback", &before);
    // Removing the newer version does not lower the floor.
    site.cmd(&["rm", "tiny:1.1.0"]).ok();
    let run = site.import(&older);
    site.assert_refused(&run, "import", "rollback", &[]);
    // An approver-signed exception naming the version lets it in until it expires.
    site.allow_downgrade("tiny:1.0.0", "approver").ok();
    assert_eq!(site.audit_tail(1)[0]["action"], "allow_downgrade");
    site.import(&older).ok();
}

#[test]
fn a_downgrade_exception_from_a_non_approver_is_refused() {
    let site = Site::new();
    let run = site.allow_downgrade("tiny:1.0.0", "stranger");
    site.assert_refused(&run, "allow_downgrade", "unknown_approver", &[]);
}

#[test]
fn the_same_version_with_a_different_digest_is_refused() {
    let site = Site::new();
    let first = site.bundle("first", "1.0.0", "publisher", &[]);
    let second = site.bundle("second", "1.0.0", "publisher", &[]);
    site.import(&first).ok();
    let before = site.ls();
    let run = site.import(&second);
    site.assert_refused(&run, "import", "version_conflict", &before);
    // Even after the first is removed, 1.0.0 never means other bytes.
    site.cmd(&["rm", "tiny:1.0.0"]).ok();
    let run = site.import(&second);
    site.assert_refused(&run, "import", "version_conflict", &[]);
}

#[test]
fn files_mixed_from_two_validly_signed_bundles_are_refused() {
    let site = Site::new();
    let a = site.bundle("a", "1.0.0", "publisher", &[]);
    let b = site.bundle("b", "1.0.1", "publisher", &[]);
    let dir_a = site.ws.unpack(&a, "unpacked-a");
    let dir_b = site.ws.unpack(&b, "unpacked-b");
    // a's signature with b's model card: both files are genuine, the pair is not.
    std::fs::copy(dir_b.join("MODEL_CARD.md"), dir_a.join("MODEL_CARD.md")).unwrap();
    let run = site.import(&dir_a);
    site.assert_refused(&run, "import", "chunk_mismatch", &[]);
    assert!(run.stderr.contains("MODEL_CARD.md"));
}

#[test]
fn an_approver_who_signed_the_bundle_is_refused_four_eyes() {
    let site = Site::new();
    site.trust("--approver", "publisher");
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    let before = site.ls();
    let run = site.approve("tiny:1.0.0", "publisher");
    site.assert_refused(&run, "approve", "four_eyes", &before);
    assert_eq!(site.ls()[0]["state"], "quarantined");
}

#[test]
fn an_approval_by_an_unknown_key_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    let before = site.ls();
    let run = site.approve("tiny:1.0.0", "stranger");
    site.assert_refused(&run, "approve", "unknown_approver", &before);
}

#[test]
fn tagging_an_unapproved_version_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    let before = site.ls();
    let run = site.cmd(&["tag", "tiny:1.0.0", "prod"]);
    site.assert_refused(&run, "tag", "not_approved", &before);
}

#[test]
fn an_approval_stops_counting_once_its_approver_is_no_longer_trusted() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    site.approve("tiny:1.0.0", "approver").ok();
    let id = site.ws.public("approver");
    let listed = site.cmd(&["trust", "ls", "--json"]).ok().json();
    let approver_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "approver")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    site.cmd(&["trust", "rm", &approver_id]).ok();
    assert!(id.exists());
    let before = site.ls();
    let run = site.cmd(&["tag", "tiny:1.0.0", "prod"]);
    site.assert_refused(&run, "tag", "approval_invalid", &before);
}

#[test]
fn removing_a_tagged_version_is_refused() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    site.approve("tiny:1.0.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.0.0", "prod"]).ok();
    let before = site.ls();
    let run = site.cmd(&["rm", "tiny:1.0.0"]);
    site.assert_refused(&run, "rm", "tagged", &before);
    // Untagged, it goes; gc then reclaims its blobs.
    site.cmd(&["untag", "tiny:prod"]).ok();
    site.cmd(&["rm", "tiny:1.0.0"]).ok();
    assert!(site.ls().is_empty());
    let gc = site.cmd(&["gc", "--json"]).ok().json();
    assert!(gc["blobs"].as_u64().unwrap() >= 2);
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
}

#[test]
fn export_writes_an_approved_version_read_only_and_verifiable() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    let out = site.ws.path("exported");
    let run = site.cmd(&["export", "tiny:1.0.0", "-o", out.to_str().unwrap()]);
    assert_eq!(run.code, 1, "an unapproved version is not exported");
    assert!(!out.exists());
    site.approve("tiny:1.0.0", "approver").ok();
    site.cmd(&["export", "tiny:1.0.0", "-o", out.to_str().unwrap()])
        .ok();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "exported files are read-only");
    site.ws.verify(&out, &[]).ok();
    let shipped = site.ws.unpack(&bundle, "shipped");
    assert_eq!(
        std::fs::read(out.join("model.sig")).unwrap(),
        std::fs::read(shipped.join("model.sig")).unwrap(),
        "the signature comes back byte for byte"
    );
}

#[test]
fn fsck_finds_an_altered_blob() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    site.import(&bundle).ok();
    let path = site.blob_path("tiny:1.0.0", "model.safetensors");
    // Blobs are named by their SHA-256.
    let blob = path.file_name().unwrap().to_str().unwrap().to_owned();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    flip_byte(&path, 100);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let run = site.cmd(&["fsck", "--json"]);
    assert_eq!(run.code, 1);
    let problems = run.json()["problems"].to_string();
    assert!(
        problems.contains(&blob) && problems.contains("altered"),
        "{problems}"
    );
}

#[test]
fn commands_on_a_missing_registry_say_how_to_make_one() {
    let ws = Workspace::new();
    let run = run(airlock().arg("--data").arg(ws.path("nowhere")).arg("ls"));
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("airlock init"), "{}", run.stderr);
}

#[test]
fn the_size_limit_and_refused_formats_of_the_policy_are_enforced() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    let policy = site.data.join("policy.toml");
    let original = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        original.replace("max_bundle_bytes = 549755813888", "max_bundle_bytes = 100"),
    )
    .unwrap();
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "size_limit", &[]);
    std::fs::write(
        &policy,
        original.replace("refused = []", "refused = [\"safetensors\"]"),
    )
    .unwrap();
    let run = site.import(&bundle);
    site.assert_refused(&run, "import", "format", &[]);
}

#[test]
fn the_same_bundle_imported_by_two_processes_at_once_lands_once() {
    let site = Site::new();
    let bundle = site.bundle("a", "1.0.0", "publisher", &[]);
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
                .arg("--data")
                .arg(&site.data)
                .args(["import", "--json"])
                .arg(&bundle)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(site.ls().len(), 1);
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
}

#[test]
fn a_later_import_replaces_a_damaged_shared_blob_with_its_verified_copy() {
    let site = Site::new();
    site.import(&site.bundle("a", "1.0.0", "publisher", &[]))
        .ok();
    let path = site.blob_path("tiny:1.0.0", "config.json");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    flip_byte(&path, 3);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    assert_eq!(site.cmd(&["fsck", "--json"]).json()["clean"], false);
    // 1.1.0 carries the same config.json: its verified copy takes the damaged one's place.
    site.import(&site.bundle("b", "1.1.0", "publisher", &[]))
        .ok();
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
}

// The state bound to the audit log: every row that decides what may run or who may read is
// replayed from the signed log by `fsck`, which names each row the database holds otherwise
// (one line: table and row, what the database says, what the log says), and is refused by
// the commands that would act on it.

impl Site {
    /// The registry database, for edits made behind airlock's back.
    pub fn db(&self) -> PathBuf {
        self.data.join("registry.db")
    }

    /// `fsck --json`, which must find problems (exit 1): its problem lines.
    #[track_caller]
    pub fn fsck_problems(&self) -> Vec<String> {
        let run = self.cmd(&["fsck", "--json"]);
        assert_eq!(run.code, 1, "fsck must fail\nstdout: {}", run.stdout);
        let json = run.json();
        assert_eq!(json["clean"], false);
        json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts `fsck` is clean (exit 0), in JSON and in text.
    #[track_caller]
    pub fn assert_fsck_clean(&self) {
        let json = self.cmd(&["fsck", "--json"]).ok().json();
        assert_eq!(json["clean"], true, "{json}");
        let text = self.cmd(&["fsck"]).ok().stdout;
        assert!(text.starts_with("clean:"), "{text}");
    }
}

/// `tiny:1.0.0` imported, approved and tagged `prod`; returns its digest (hex).
fn approved_and_tagged(site: &Site) -> String {
    let imported = site
        .import(&site.bundle("a", "1.0.0", "publisher", &[]))
        .ok()
        .json();
    site.approve("tiny:1.0.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.0.0", "prod"]).ok();
    imported["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned()
}

#[test]
fn a_registry_after_normal_operations_passes_fsck() {
    let site = Site::new();
    approved_and_tagged(&site);
    site.import(&site.bundle("b", "1.1.0", "publisher", &[]))
        .ok();
    site.cmd(&["reject", "tiny:1.1.0", "--reason", "fails the eval"])
        .ok();
    site.import(&site.bundle("c", "1.2.0", "publisher", &[]))
        .ok();
    site.approve("tiny:1.2.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.2.0", "prod"]).ok();
    site.cmd(&["tag", "tiny:1.0.0", "previous"]).ok();
    site.cmd(&["untag", "tiny:previous"]).ok();
    site.cmd(&["rm", "tiny:1.0.0"]).ok();
    site.allow_downgrade("tiny:0.9.0", "approver").ok();
    site.import(&site.bundle("d", "0.9.0", "publisher", &[]))
        .ok();
    site.cmd(&["keys", "create", "--name", "app", "--clearance", "internal"])
        .ok();
    site.cmd(&[
        "keys",
        "create",
        "--name",
        "ops",
        "--role",
        "admin",
        "--expires",
        "30d",
    ])
    .ok();
    site.cmd(&["keys", "revoke", "ops"]).ok();
    site.assert_fsck_clean();
}

#[test]
fn fsck_names_an_api_key_raised_to_admin_and_secret_by_hand() {
    let site = Site::new();
    let created = site
        .cmd(&[
            "keys",
            "create",
            "--name",
            "app",
            "--clearance",
            "internal",
            "--json",
        ])
        .ok()
        .json();
    let id = created["info"]["id"].as_str().unwrap().to_owned();
    site.assert_fsck_clean();
    sql(
        &site.db(),
        &format!("UPDATE api_keys SET role = 'admin', clearance = 'secret' WHERE id = '{id}'"),
    );
    assert_eq!(
        site.fsck_problems(),
        [format!(
            "api_keys {id} (app): the database says role admin, clearance secret; the log says role user, clearance internal"
        )]
    );
    // The text output names it too, and exits 1.
    let text = site.cmd(&["fsck"]);
    assert_eq!(text.code, 1);
    assert!(text.stdout.starts_with("PROBLEMS FOUND"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!(
            "problem: api_keys {id} (app): the database says role admin"
        )),
        "{}",
        text.stdout
    );
}

#[test]
fn fsck_names_an_expiry_removed_a_revocation_undone_and_a_key_inserted_by_hand() {
    let site = Site::new();
    let id = |json: Value| json["info"]["id"].as_str().unwrap().to_owned();
    let temporary = id(site
        .cmd(&[
            "keys",
            "create",
            "--name",
            "temp",
            "--expires",
            "1h",
            "--json",
        ])
        .ok()
        .json());
    let revoked = id(site
        .cmd(&["keys", "create", "--name", "gone", "--json"])
        .ok()
        .json());
    site.cmd(&["keys", "revoke", "gone"]).ok();
    let expires = sql_column(
        &site.db(),
        &format!("SELECT expires_at FROM api_keys WHERE id = '{temporary}'"),
    )
    .remove(0);
    sql(
        &site.db(),
        &format!(
            "UPDATE api_keys SET expires_at = NULL WHERE id = '{temporary}';
             UPDATE api_keys SET revoked_at = NULL WHERE id = '{revoked}';
             INSERT INTO api_keys (id, name, role, clearance, hash, created_at, created_by)
                 VALUES ('00000000000000aa', 'forged', 'admin', 'secret', 'x', '2026-01-01T00:00:00Z', 'user:x');"
        ),
    );
    let mut problems = site.fsck_problems();
    problems.sort();
    let mut expected = [
        "api_keys 00000000000000aa (forged): the database says role admin, clearance secret, expires never, not revoked; the log has no record of it".to_owned(),
        format!("api_keys {revoked} (gone): the database says not revoked; the log says revoked"),
        format!("api_keys {temporary} (temp): the database says expires never; the log says expires {expires}"),
    ];
    expected.sort();
    assert_eq!(problems, expected);
}

#[test]
fn fsck_names_deleted_rollback_history_rows_and_the_rollback_floor_still_holds() {
    let site = Site::new();
    let digest = approved_and_tagged(&site);
    site.cmd(&["untag", "tiny:prod"]).ok();
    sql(&site.db(), "DELETE FROM history");
    assert_eq!(
        site.fsck_problems(),
        [
            format!(
                "history tiny:1.0.0: the database has no such row; the log says imported as sha256:{digest}"
            ),
            "history tiny (rollback high-water mark): the database says none; the log says 1.0.0"
                .to_owned(),
        ]
    );
    // With the rows gone from the database, the log still holds the floor: 1.0.0 removed,
    // 0.9.0 is refused as a rollback, and 1.0.0 never means other bytes.
    site.cmd(&["rm", "tiny:1.0.0"]).ok();
    let older = site.bundle("old", "0.9.0", "publisher", &[]);
    let run = site.import(&older);
    site.assert_refused(&run, "import", "rollback", &[]);
    let other = site.bundle("other", "1.0.0", "publisher", &[]);
    let run = site.import(&other);
    site.assert_refused(&run, "import", "version_conflict", &[]);
}

#[test]
fn fsck_names_a_version_approved_by_hand_and_nothing_uses_it() {
    let site = Site::new();
    let imported = site
        .import(&site.bundle("a", "1.0.0", "publisher", &[]))
        .ok()
        .json();
    let digest = imported["digest"].as_str().unwrap();
    sql(&site.db(), "UPDATE versions SET state = 'approved'");
    assert_eq!(
        site.fsck_problems(),
        ["versions tiny:1.0.0: the database says approved; the log says quarantined"]
    );
    // Not a note: an error, and every use of it is refused with the reason.
    let before = site.ls();
    let run = site.cmd(&["tag", "tiny:1.0.0", "prod"]);
    site.assert_refused(&run, "tag", "not_in_log", &before);
    assert!(
        run.stderr
            .contains("approved in the database, but the audit log says it is quarantined"),
        "{}",
        run.stderr
    );
    let out = site.ws.path("exported");
    let run = site.cmd(&["export", "tiny:1.0.0", "-o", out.to_str().unwrap()]);
    site.assert_refused(&run, "export", "not_in_log", &before);
    assert!(!out.exists());
    let run = site.cmd(&[
        "export",
        &format!("tiny@{digest}"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // Approved properly, it is usable and fsck is clean again... once the hand edit is undone.
    sql(&site.db(), "UPDATE versions SET state = 'quarantined'");
    site.approve("tiny:1.0.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.0.0", "prod"]).ok();
    site.assert_fsck_clean();
}

#[test]
fn fsck_names_a_tag_moved_by_hand_and_the_tag_is_not_followed() {
    let site = Site::new();
    approved_and_tagged(&site);
    site.import(&site.bundle("b", "1.1.0", "publisher", &[]))
        .ok();
    site.approve("tiny:1.1.0", "approver").ok();
    // prod moved to 1.1.0 in the database alone.
    sql(
        &site.db(),
        "UPDATE tags SET version_id = (SELECT id FROM versions WHERE version = '1.1.0')",
    );
    assert_eq!(
        site.fsck_problems(),
        ["tags tiny:prod: the database says it points at 1.1.0; the log says it points at 1.0.0"]
    );
    let out = site.ws.path("exported");
    let run = site.cmd(&["export", "tiny:prod", "-o", out.to_str().unwrap()]);
    site.assert_refused(&run, "export", "not_in_log", &site.ls());
    assert!(
        run.stderr.contains(
            "tag tiny:prod points at 1.1.0 in the database, but the audit log says it points at 1.0.0"
        ),
        "{}",
        run.stderr
    );
}
