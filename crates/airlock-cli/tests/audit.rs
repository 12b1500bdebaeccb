//! The audit log: `audit verify` catches every kind of tampering, and its proofs check out
//! against an independent RFC 6962 implementation (Python, below).

use std::path::Path;
use std::process::Command;

use airlock_audit::merkle::{Frontier, leaf_hash};
use airlock_audit::{Checkpoint, NoteSigner};

use crate::registry::Site;
use crate::support::Run;

/// A registry with a dozen entries: imports, a refusal, an approval, a tag.
fn busy_site() -> Site {
    let site = Site::new();
    for (i, v) in ["1.0.0", "1.1.0", "1.2.0"].iter().enumerate() {
        let bundle = site.bundle(&format!("b{i}"), v, "publisher", &[]);
        site.import(&bundle).ok();
    }
    let bad = site.bundle("bad", "2.0.0", "stranger", &[]);
    assert_eq!(site.import(&bad).code, 1);
    site.approve("tiny:1.2.0", "approver").ok();
    site.cmd(&["tag", "tiny:1.2.0", "prod"]).ok();
    site
}

fn log_path(site: &Site) -> std::path::PathBuf {
    site.data.join("audit/log")
}

fn lines(site: &Site) -> Vec<String> {
    std::fs::read_to_string(log_path(site))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(site: &Site, lines: &[String]) {
    std::fs::write(log_path(site), lines.join("\n") + "\n").unwrap();
}

/// Line numbers (0-based) of entries, as opposed to checkpoints.
fn entry_lines(lines: &[String]) -> Vec<usize> {
    (0..lines.len())
        .filter(|i| !lines[*i].starts_with("{\"checkpoint\":"))
        .collect()
}

#[track_caller]
fn assert_tampering_detected(site: &Site, needle: &str) {
    let run: Run = site.cmd(&["audit", "verify", "--json"]);
    assert_eq!(
        run.code, 1,
        "tampering not detected\n{}\n{}",
        run.stdout, run.stderr
    );
    let json = run.json();
    assert_eq!(json["kind"], "audit_integrity");
    assert!(
        json["error"].as_str().unwrap().contains(needle),
        "{} does not mention {needle:?}",
        json["error"]
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1);
}

#[test]
fn an_untouched_log_verifies() {
    let site = busy_site();
    let run = site.cmd(&["audit", "verify", "--json"]).ok().json();
    // init, two trust changes, three imports, a refusal, an approval, a tag.
    assert_eq!(run["entries"], 9);
}

#[test]
fn an_edited_entry_is_detected() {
    let site = busy_site();
    let mut all = lines(&site);
    let target = entry_lines(&all)[4];
    assert!(all[target].contains("\"outcome\":\"ok\"") || all[target].contains("refused"));
    all[target] = all[target].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    write_lines(&site, &all);
    assert_tampering_detected(&site, "hash to");
}

#[test]
fn a_deleted_entry_is_detected() {
    let site = busy_site();
    let mut all = lines(&site);
    let target = entry_lines(&all)[3];
    // The entry and the checkpoint after it, so no checkpoint size gives it away directly.
    all.drain(target..target + 2);
    write_lines(&site, &all);
    assert_tampering_detected(&site, "expected 3");
}

#[test]
fn two_swapped_entries_are_detected() {
    let site = busy_site();
    let mut all = lines(&site);
    let entries = entry_lines(&all);
    all.swap(entries[2], entries[5]);
    write_lines(&site, &all);
    assert_tampering_detected(&site, "reordered");
}

#[test]
fn a_truncated_tail_is_detected() {
    let site = busy_site();
    let mut all = lines(&site);
    // Cut the last two entries with their checkpoints: what is left is a sealed log, and
    // only the separately kept latest checkpoint shows it was longer.
    all.truncate(all.len() - 4);
    write_lines(&site, &all);
    assert_tampering_detected(&site, "truncated");
}

#[test]
fn a_log_truncated_below_a_witnessed_checkpoint_is_detected_even_if_head_is_rewritten() {
    let site = busy_site();
    let witness = site.ws.path("witness.checkpoint");
    std::fs::write(&witness, site.cmd(&["audit", "checkpoint"]).ok().stdout).unwrap();
    let mut all = lines(&site);
    all.truncate(all.len() - 2);
    write_lines(&site, &all);
    std::fs::remove_file(site.data.join("audit/head")).unwrap();
    site.cmd(&["audit", "verify"]).ok();
    let run = site.cmd(&[
        "audit",
        "verify",
        "--json",
        "--witness",
        witness.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["kind"], "audit_integrity");
}

#[test]
fn a_log_rewritten_with_recomputed_hashes_but_without_the_key_fails_its_signatures() {
    let site = busy_site();
    let mut all = lines(&site);
    let target = entry_lines(&all)[1];
    all[target] = all[target].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    let origin = site
        .cmd(&["audit", "checkpoint"])
        .ok()
        .stdout
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let forger = NoteSigner::generate("airlock-audit").unwrap();
    let mut frontier = Frontier::new();
    for line in &mut all {
        if line.starts_with("{\"checkpoint\":") {
            let note = forger.sign(&Checkpoint {
                origin: origin.clone(),
                size: frontier.size(),
                root: frontier.root(),
            });
            *line = serde_json::json!({ "checkpoint": note }).to_string();
        } else {
            frontier.push(leaf_hash(line.as_bytes()));
        }
    }
    write_lines(&site, &all);
    std::fs::remove_file(site.data.join("audit/head")).unwrap();
    assert_tampering_detected(&site, "not signed by the log's key");
}

/// RFC 6962 / RFC 9162 verification written from the RFC, independently of the Rust code.
const RFC6962_CHECK: &str = r#"
import base64, hashlib, json, sys

def leaf(data): return hashlib.sha256(b"\x00" + data).digest()
def node(l, r): return hashlib.sha256(b"\x01" + l + r).digest()

def mth(leaves):
    n = len(leaves)
    if n == 0: return hashlib.sha256(b"").digest()
    if n == 1: return leaves[0]
    k = 1
    while k * 2 < n: k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))

def verify_inclusion(h, index, size, proof, root):
    if index >= size: return False
    fn, sn, r = index, size - 1, h
    for p in proof:
        if sn == 0: return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not (fn & 1) and fn != 0:
                fn >>= 1; sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1; sn >>= 1
    return sn == 0 and r == root

def verify_consistency(m, n, old, new, proof):
    if m == n: return not proof and old == new
    path = ([old] if m & (m - 1) == 0 else []) + proof
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1; sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0: return False
        if fn & 1 or fn == sn:
            fr = node(c, fr); sr = node(c, sr)
            while not (fn & 1) and fn != 0:
                fn >>= 1; sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1; sn >>= 1
    return fr == old and sr == new and sn == 0

log, incl, cons = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
entries = [l.rstrip(b"\n") for l in open(log, "rb") if not l.startswith(b'{"checkpoint":')]
leaves = [leaf(e) for e in entries]
h = bytes.fromhex
i, size = incl["index"], incl["tree_size"]
assert leaf(entries[i]) == h(incl["leaf_hash"]), "leaf hash"
assert mth(leaves[:size]) == h(incl["root"]), "root"
assert base64.b64decode(incl["checkpoint"].split("\n")[2]) == h(incl["root"]), "checkpoint root"
assert verify_inclusion(leaves[i], i, size, [h(p) for p in incl["proof"]], h(incl["root"])), "inclusion"
assert not verify_inclusion(leaf(b"forged"), i, size, [h(p) for p in incl["proof"]], h(incl["root"]))
m, n = cons["old_size"], cons["new_size"]
assert mth(leaves[:m]) == h(cons["old_root"]) and mth(leaves[:n]) == h(cons["new_root"]), "roots"
assert verify_consistency(m, n, h(cons["old_root"]), h(cons["new_root"]), [h(p) for p in cons["proof"]]), "consistency"
assert not verify_consistency(m, n, leaf(b"x"), h(cons["new_root"]), [h(p) for p in cons["proof"]])
print("ok")
"#;

fn python_check(site: &Site, log: &Path, index: u64, old: u64) {
    let size = site.cmd(&["audit", "verify", "--json"]).ok().json()["entries"]
        .as_u64()
        .unwrap();
    let incl = site.ws.path(&format!("incl-{index}.json"));
    let cons = site.ws.path(&format!("cons-{old}.json"));
    std::fs::write(
        &incl,
        site.cmd(&["audit", "prove", &index.to_string()])
            .ok()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        &cons,
        site.cmd(&["audit", "consistency", &old.to_string(), &size.to_string()])
            .ok()
            .stdout,
    )
    .unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(RFC6962_CHECK)
        .arg(log)
        .arg(&incl)
        .arg(&cons)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "index {index}, old {old}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inclusion_and_consistency_proofs_check_out_against_an_independent_rfc6962_implementation() {
    let site = busy_site();
    let log = log_path(&site);
    let size = site.cmd(&["audit", "verify", "--json"]).ok().json()["entries"]
        .as_u64()
        .unwrap();
    for index in 0..size {
        python_check(&site, &log, index, (index % (size - 1)) + 1);
    }
}
