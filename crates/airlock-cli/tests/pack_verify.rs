//! What a publisher and a verifier see when everything is in order.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read_and_prints_the_key_id() {
    let ws = Workspace::new();
    let meta = std::fs::metadata(ws.key("publisher")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let out = run(airlock()
        .args(["keygen", "--name", "k", "--json", "-o"])
        .arg(ws.path("more")))
    .ok()
    .json();
    let pem = std::fs::read(ws.path("more/k.pub")).unwrap();
    let id = airlock_bundle::Sha256Digest::of(&pem).to_hex();
    assert_eq!(out["key_id"], id.as_str());
    let again = run(airlock()
        .args(["keygen", "--name", "k", "-o"])
        .arg(ws.path("more")));
    assert_eq!(again.code, 2, "must refuse to overwrite a key");
}

#[test]
fn a_packed_directory_verifies_as_a_tar_and_unpacked() {
    let ws = Workspace::new();
    let bundle = ws.pack(&ws.safetensors_model("src"), "tiny.airlock", &[]);
    let tar = ws.verify(&bundle, &[]).ok().json();
    assert_eq!(tar["ok"], true);
    assert_eq!(tar["name"], "tiny");
    let dir = ws.unpack(&bundle, "unpacked");
    let unpacked = ws.verify(&dir, &[]).ok().json();
    assert_eq!(unpacked["digest"], tar["digest"]);
    assert_sha256sums_pass(&dir);
}

#[test]
fn bundle_entries_come_in_the_documented_order() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    std::fs::create_dir(ws.path("evals")).unwrap();
    std::fs::write(
        ws.path("evals/reference.jsonl"),
        "{\"prompt\":\"hi\",\"expect\":\"hello\"}\n",
    )
    .unwrap();
    let bundle = ws.pack(
        &src,
        "tiny.airlock",
        &["--evals", ws.path("evals").to_str().unwrap()],
    );
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&bundle)
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        names,
        [
            "model.sig",
            "sbom.cdx.json",
            "SHA256SUMS",
            "model.safetensors",
            "tokenizer.json",
            "1_Pooling/config.json",
            "config.json",
            "modules.json",
            "LICENSE",
            "MODEL_CARD.md",
            "evals/reference.jsonl"
        ]
    );
    let info = run(airlock().arg("inspect").arg(&bundle).arg("--json"))
        .ok()
        .json();
    assert_eq!(info["evals"][0]["cases"], 1);
    assert_eq!(info["kind"], "embedding");
    assert_eq!(info["model"]["architecture"], "BertModel");
    assert_eq!(info["model"]["parameters"], 16 * 8 + 8 * 8);
    assert_eq!(info["model"]["context_length"], 512);
}

#[test]
fn packing_the_same_input_twice_gives_identical_bytes() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    let a = ws.pack(&src, "a.airlock", &[]);
    // Touch every source file: mtimes must not leak into the bundle.
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap();
            std::fs::write(&path, data).unwrap();
        }
    }
    let b = ws.pack(&src, "b.airlock", &[]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let gguf = ws.gguf_model("m.gguf");
    let c = ws.pack(&gguf, "c.airlock", &[]);
    let d = ws.pack(&gguf, "d.airlock", &[]);
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(&d).unwrap());
}

#[test]
fn source_date_epoch_sets_the_created_time() {
    let ws = Workspace::new();
    let out = ws.path("t.airlock");
    run(airlock()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("pack")
        .arg(ws.gguf_model("m.gguf"))
        .args(["--name", "t", "--version", "2.1.0", "--key"])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(&out))
    .ok();
    let info = run(airlock().arg("inspect").arg(&out).arg("--json"))
        .ok()
        .json();
    assert_eq!(info["created"], "2023-11-14T22:13:20Z");
    assert_eq!(info["model"]["quantization"], "Q4_1");
    assert_eq!(info["model"]["context_length"], 4096);
}

#[test]
fn a_cosignature_keeps_the_digest_and_meets_a_threshold_of_two() {
    let ws = Workspace::new();
    let bundle = ws.pack(&ws.gguf_model("m.gguf"), "m.airlock", &[]);
    let before = ws.verify(&bundle, &[]).ok().json()["digest"].clone();
    let two = |ws: &Workspace, b: &std::path::Path| {
        let (p, c) = (ws.public("publisher"), ws.public("cosigner"));
        ws.verify(b, &[&"--trust", &p, &"--trust", &c, &"--threshold", &"2"])
    };
    assert_refused(&two(&ws, &bundle), "threshold_not_met");
    ws.cosign(&bundle, "cosigner").ok();
    let after = two(&ws, &bundle).ok().json();
    assert_eq!(after["digest"], before);
    assert_eq!(after["signers"].as_array().unwrap().len(), 2);
    // The same for an unpacked directory.
    let dir = ws.unpack(&ws.pack(&ws.gguf_model("n.gguf"), "n.airlock", &[]), "n");
    ws.cosign(&dir, "cosigner").ok();
    two(&ws, &dir).ok();
    let again = ws.cosign(&dir, "cosigner");
    assert_eq!(
        again.code, 2,
        "signing twice with one key is a usage error: {}",
        again.stderr
    );
}

#[test]
fn an_encrypted_key_needs_its_passphrase() {
    let ws = Workspace::new();
    run(airlock()
        .env("AIRLOCK_KEY_PASSPHRASE", "s3cret")
        .args(["keygen", "--encrypt", "--name", "enc", "-o"])
        .arg(ws.keys()))
    .ok();
    let text = std::fs::read_to_string(ws.key("enc")).unwrap();
    assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let pack = |pass: &str| {
        run(airlock()
            .env("AIRLOCK_KEY_PASSPHRASE", pass)
            .arg("pack")
            .arg(ws.gguf_model("m.gguf"))
            .args(["--name", "m", "--version", "1.0.0", "--key"])
            .arg(ws.key("enc"))
            .arg("-o")
            .arg(ws.path("m.airlock")))
    };
    let wrong = pack("wrong");
    assert_eq!(wrong.code, 2);
    assert!(wrong.stderr.contains("passphrase"), "{}", wrong.stderr);
    assert!(
        !ws.path("m.airlock").exists(),
        "nothing is written when the key cannot be opened"
    );
    pack("s3cret").ok();
    ws.verify(&ws.path("m.airlock"), &[&"--trust", &ws.public("enc")])
        .ok();
}

#[test]
fn verify_is_quiet_on_stderr_when_piped_and_reports_in_text() {
    let ws = Workspace::new();
    let bundle = ws.pack(&ws.gguf_model("m.gguf"), "m.airlock", &[]);
    let out = run(airlock()
        .arg("verify")
        .arg(&bundle)
        .arg("--trust")
        .arg(ws.public("publisher")))
    .ok();
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {:?}",
        out.stderr
    );
    assert!(
        out.stdout.starts_with("OK tiny:1.0.0 sha256:"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_failed_pack_leaves_nothing_behind() {
    let ws = Workspace::new();
    let src = ws.safetensors_model("src");
    std::fs::write(src.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let out = ws.path("never.airlock");
    let r = run(airlock()
        .arg("pack")
        .arg(&src)
        .args(["--name", "x", "--version", "1.0.0", "--key"])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(&out));
    assert_eq!(r.code, 1);
    let leftovers: Vec<_> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("airlock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
