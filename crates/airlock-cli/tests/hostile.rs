//! Every hostile input gets a non-zero exit and a one-line reason of the right kind.

use std::path::{Path, PathBuf};

use airlock_bundle::manifest::Statement;
use airlock_bundle::signature::{SigstoreBundle, pae};
use airlock_bundle::{Limits, PrivateKey};
use airlock_testkit::gguf::GgufBuilder;
use airlock_testkit::safetensors::build_with_header;
use airlock_testkit::tar::{end, entry};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::support::*;

fn packed(ws: &Workspace) -> PathBuf {
    ws.pack(&ws.safetensors_model("src"), "tiny.airlock", &[])
}

fn unpacked(ws: &Workspace) -> PathBuf {
    let bundle = packed(ws);
    ws.unpack(&bundle, "dir")
}

fn read_sig(dir: &Path) -> SigstoreBundle {
    SigstoreBundle::parse(
        &std::fs::read(dir.join("model.sig")).unwrap(),
        &Limits::default(),
    )
    .unwrap()
}

fn write_sig(dir: &Path, sig: &SigstoreBundle) {
    std::fs::write(dir.join("model.sig"), sig.to_bytes().unwrap()).unwrap();
}

fn publisher(ws: &Workspace) -> PrivateKey {
    PrivateKey::read(&ws.key("publisher"), None).unwrap()
}

#[test]
fn a_flipped_byte_in_a_weight_file_names_the_file_and_chunk() {
    let ws = Workspace::new();
    let bundle = packed(&ws);
    flip_byte(&bundle, tar_offset(&bundle, "model.safetensors") + 100);
    let r = ws.verify(&bundle, &[]);
    assert_refused(&r, "chunk_mismatch");
    assert!(
        r.stderr.contains("model.safetensors: chunk 0"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_flipped_byte_in_an_unpacked_bundle_is_found_too() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    flip_byte(&dir.join("tokenizer.json"), 3);
    assert_refused(&ws.verify(&dir, &[]), "chunk_mismatch");
}

#[test]
fn a_missing_file_is_named() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    std::fs::remove_file(dir.join("1_Pooling/config.json")).unwrap();
    let r = ws.verify(&dir, &[]);
    assert_refused(&r, "missing_file");
    assert!(r.stderr.contains("1_Pooling/config.json"));
}

#[test]
fn an_extra_file_is_named_in_a_directory_and_in_a_tar() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    std::fs::write(dir.join("extra.json"), "{}").unwrap();
    let r = ws.verify(&dir, &[]);
    assert_refused(&r, "extra_file");
    assert!(r.stderr.contains("extra.json"));

    let bundle = packed(&ws);
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes.truncate(bytes.len() - 1024);
    bytes.extend(entry("smuggled.txt", b'0', b"payload"));
    bytes.extend(end());
    std::fs::write(&bundle, bytes).unwrap();
    assert_refused(&ws.verify(&bundle, &[]), "extra_file");
}

#[test]
fn an_edited_manifest_breaks_the_signature() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    let mut sig = read_sig(&dir);
    let payload = String::from_utf8(sig.payload().unwrap())
        .unwrap()
        .replace("Apache-2.0", "MIT");
    sig.dsse_envelope.payload = B64.encode(payload);
    write_sig(&dir, &sig);
    assert_refused(&ws.verify(&dir, &[]), "bad_signature");
}

#[test]
fn a_signature_by_an_untrusted_key_is_refused() {
    let ws = Workspace::new();
    let bundle = packed(&ws);
    let r = ws.verify(&bundle, &[&"--trust", &ws.public("stranger")]);
    assert_refused(&r, "untrusted_signer");
}

#[test]
fn a_threshold_not_met_is_refused() {
    let ws = Workspace::new();
    let bundle = packed(&ws);
    let r = ws.verify(
        &bundle,
        &[
            &"--trust",
            &ws.public("publisher"),
            &"--trust",
            &ws.public("cosigner"),
            &"--threshold",
            &"2",
        ],
    );
    assert_refused(&r, "threshold_not_met");
}

#[test]
fn the_same_key_signing_twice_counts_once() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    let mut sig = read_sig(&dir);
    let copy = sig.dsse_envelope.signatures[0].clone();
    sig.dsse_envelope.signatures.push(copy);
    write_sig(&dir, &sig);
    let r = ws.verify(
        &dir,
        &[
            &"--trust",
            &ws.public("publisher"),
            &"--trust",
            &ws.public("cosigner"),
            &"--threshold",
            &"2",
        ],
    );
    assert_refused(&r, "threshold_not_met");
    assert!(r.stderr.contains("repeated signature"), "{}", r.stderr);
}

#[test]
fn a_valid_signature_over_a_different_payload_type_is_refused() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    let mut sig = read_sig(&dir);
    let payload = sig.payload().unwrap();
    sig.dsse_envelope.payload_type = "application/json".into();
    sig.dsse_envelope.signatures[0].sig =
        B64.encode(publisher(&ws).sign(&pae("application/json", &payload)));
    write_sig(&dir, &sig);
    assert_refused(&ws.verify(&dir, &[]), "payload_type");
}

#[test]
fn a_validly_signed_empty_resource_list_is_refused() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    let sig = read_sig(&dir);
    let mut statement: Statement = serde_json::from_slice(&sig.payload().unwrap()).unwrap();
    statement.predicate.resources.clear();
    statement.predicate.airlock = None;
    let resigned = SigstoreBundle::sign(&statement.canonical_bytes().unwrap(), &publisher(&ws));
    write_sig(&dir, &resigned);
    assert_refused(&ws.verify(&dir, &[]), "empty_manifest");
}

#[test]
fn an_unsigned_bundle_is_refused() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    std::fs::remove_file(dir.join("model.sig")).unwrap();
    assert_refused(&ws.verify(&dir, &[]), "unsigned");
}

/// A tar that starts with the real bundle's model.sig, then one hostile entry.
fn hostile_tar(ws: &Workspace, name: &str, typeflag: u8, twice: bool) -> PathBuf {
    let dir = unpacked(ws);
    let mut bytes = entry(
        "model.sig",
        b'0',
        &std::fs::read(dir.join("model.sig")).unwrap(),
    );
    bytes.extend(entry(name, typeflag, b"x"));
    if twice {
        bytes.extend(entry(name, typeflag, b"x"));
    }
    bytes.extend(end());
    let path = ws.path("hostile.airlock");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn tar_entries_that_escape_or_are_not_plain_files_are_refused() {
    let ws = Workspace::new();
    let cases: [(&str, u8, bool, &str); 6] = [
        ("../../etc/cron.d/evil", b'0', false, "unsafe_path"),
        ("/etc/passwd", b'0', false, "unsafe_path"),
        ("model.safetensors", b'2', false, "unsafe_entry"),
        ("model.safetensors", b'1', false, "unsafe_entry"),
        ("model.safetensors", b'3', false, "unsafe_entry"),
        ("config.json", b'0', true, "duplicate_entry"),
    ];
    for (name, flag, twice, kind) in cases {
        let bundle = hostile_tar(&ws, name, flag, twice);
        assert_refused(&ws.verify(&bundle, &[]), kind);
        std::fs::remove_dir_all(ws.path("dir")).unwrap();
    }
}

#[test]
fn a_truncated_tar_is_refused_wherever_it_is_cut() {
    let ws = Workspace::new();
    let bundle = packed(&ws);
    let full = std::fs::read(&bundle).unwrap();
    for cut in [full.len() - 1, full.len() - 1024, full.len() / 2, 700] {
        std::fs::write(&bundle, &full[..cut]).unwrap();
        assert_refused(&ws.verify(&bundle, &[]), "truncated");
    }
}

#[test]
fn a_symlink_in_an_unpacked_bundle_is_refused() {
    let ws = Workspace::new();
    let dir = unpacked(&ws);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("config.json")).unwrap();
    assert_refused(&ws.verify(&dir, &[]), "unsafe_entry");
}

fn pack_src(ws: &Workspace, src: &Path) -> Run {
    run(airlock()
        .arg("pack")
        .arg(src)
        .args(["--name", "x", "--version", "1.0.0", "--key"])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(ws.path("x.airlock")))
}

/// Writes `bytes` to `target`, packs `src`, and expects a refusal naming `kind` and `why`.
#[track_caller]
fn assert_pack_refuses(
    ws: &Workspace,
    src: &Path,
    target: &Path,
    bytes: Vec<u8>,
    kind: &str,
    why: &str,
) {
    std::fs::write(target, bytes).unwrap();
    let r = pack_src(ws, src);
    assert_failed_with(&r, kind);
    assert!(r.stderr.contains(why), "{why}: {}", r.stderr);
}

#[test]
fn pack_refuses_hostile_safetensors_headers() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    let weights = src.join("model.safetensors");
    let cases: [(Vec<u8>, &str); 4] = [
        (
            {
                let mut b = build_with_header("{}", 0);
                b[..8].copy_from_slice(&(5u64 << 40).to_le_bytes());
                b
            },
            "exceeds the limit",
        ),
        (
            build_with_header(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            "overlap",
        ),
        (
            build_with_header(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4096,4104]}}"#,
                8,
            ),
            "past the",
        ),
        (
            {
                let mut b = build_with_header("{}", 16);
                b[..8].copy_from_slice(&1000u64.to_le_bytes());
                b
            },
            "past the end",
        ),
    ];
    for (bytes, why) in cases {
        assert_pack_refuses(&ws, &src, &weights, bytes, "invalid safetensors", why);
    }
}

#[test]
fn pack_refuses_hostile_gguf_headers() {
    let ws = Workspace::new();
    let path = ws.path("m.gguf");
    let mut absurd_count = GgufBuilder::new().build();
    absurd_count[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let cases = [
        (absurd_count, "tensor count"),
        (
            GgufBuilder::new()
                .raw_kv_with_string_len("general.name", 1 << 50)
                .build(),
            "string length",
        ),
        (
            GgufBuilder::new()
                .raw_kv_with_array_len("tokenizer.ggml.tokens", 8, 1 << 60)
                .build(),
            "array length",
        ),
    ];
    for (bytes, why) in cases {
        assert_pack_refuses(&ws, &path, &path, bytes, "invalid GGUF", why);
    }
}

#[test]
fn pack_refuses_a_pickle_by_name_and_by_content() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    std::fs::write(src.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    assert_failed_with(&pack_src(&ws, &src), "pickle");
    std::fs::remove_file(src.join("pytorch_model.bin")).unwrap();
    std::fs::write(
        src.join("model.safetensors"),
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
    )
    .unwrap();
    let r = pack_src(&ws, &src);
    assert_failed_with(&r, "pickle");
    assert!(r.stderr.contains("model.safetensors"));
}

#[test]
fn pack_refuses_remote_code() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    std::fs::write(
        src.join("config.json"),
        r#"{"auto_map":{"AutoModel":"modeling_evil.EvilModel"}}"#,
    )
    .unwrap();
    assert_failed_with(&pack_src(&ws, &src), "auto_map");
    std::fs::write(src.join("config.json"), "{}").unwrap();
    std::fs::write(src.join("modeling_evil.py"), "import os\n").unwrap();
    assert_failed_with(&pack_src(&ws, &src), "Python code");
}

#[test]
fn pack_refuses_bad_names_and_versions_with_usage_errors() {
    let ws = Workspace::new();
    let src = ws.gguf_model("m.gguf");
    for (name, version, why) in [
        ("Bad Name", "1.0.0", "invalid name"),
        ("ok", "1.0", "invalid version"),
    ] {
        let r = run(airlock()
            .arg("pack")
            .arg(&src)
            .args(["--name", name, "--version", version, "--key"])
            .arg(ws.key("publisher"))
            .arg("-o")
            .arg(ws.path("x.airlock")));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(why), "{}", r.stderr);
    }
}
