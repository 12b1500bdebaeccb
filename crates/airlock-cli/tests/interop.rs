//! Interoperability with the OpenSSF Model Signing reference tool (`model_signing`).

use std::process::Command;

use crate::support::*;

#[test]
fn the_reference_verifier_accepts_an_unpacked_bundle_and_rejects_any_changed_byte() {
    let ws = Workspace::new();
    let bundle = ws.pack(&ws.safetensors_model("src"), "tiny.airlock", &[]);
    let dir = ws.unpack(&bundle, "dir");
    let ok = oms_verify(&dir, &ws.public("publisher"));
    assert_eq!(
        ok.code, 0,
        "model_signing refused an airlock bundle:\n{}\n{}",
        ok.stdout, ok.stderr
    );
    let wrong_key = oms_verify(&dir, &ws.public("stranger"));
    assert_ne!(wrong_key.code, 0);
    let files: Vec<String> = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| l[66..].to_owned())
        .collect();
    assert!(files.len() >= 8, "{files:?}");
    for file in std::iter::once("SHA256SUMS".to_owned()).chain(files) {
        let path = dir.join(&file);
        let size = std::fs::metadata(&path).unwrap().len();
        flip_byte(&path, size / 2);
        let r = oms_verify(&dir, &ws.public("publisher"));
        assert_ne!(
            r.code, 0,
            "model_signing accepted a bundle whose {file} was changed"
        );
        assert!(
            r.stdout.contains(&file) || r.stderr.contains(&file),
            "{file}: {}{}",
            r.stdout,
            r.stderr
        );
        flip_byte(&path, size / 2);
    }
    assert_eq!(
        oms_verify(&dir, &ws.public("publisher")).code,
        0,
        "restored bundle verifies again"
    );
}

#[test]
fn the_reference_verifier_accepts_a_cosigned_bundle_by_its_publisher() {
    let ws = Workspace::new();
    let bundle = ws.pack(&ws.gguf_model("m.gguf"), "m.airlock", &[]);
    ws.cosign(&bundle, "cosigner").ok();
    let dir = ws.unpack(&bundle, "dir");
    let r = oms_verify(&dir, &ws.public("publisher"));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn airlock_verifies_a_directory_signed_by_the_reference_tool() {
    let ws = Workspace::new();
    let dir = ws.safetensors_model("src");
    std::fs::write(dir.join(".gitattributes"), "*.safetensors filter=lfs\n").unwrap();
    let sign = run(Command::new(model_signing())
        .args(["sign", "key"])
        .arg(&dir)
        .arg("--private_key")
        .arg(ws.key("publisher"))
        .arg("--signature")
        .arg(dir.join("model.sig")));
    assert_eq!(sign.code, 0, "{}{}", sign.stdout, sign.stderr);
    let ok = ws.verify(&dir, &[]).ok().json();
    assert_eq!(
        ok["ignored"],
        serde_json::json!([".gitattributes"]),
        "the signer's ignore_paths are reported"
    );
    assert_refused(
        &ws.verify(&dir, &[&"--trust", &ws.public("stranger")]),
        "untrusted_signer",
    );
    flip_byte(&dir.join("config.json"), 2);
    let r = ws.verify(&dir, &[]);
    assert_refused(&r, "hash_mismatch");
    assert!(r.stderr.contains("config.json"), "{}", r.stderr);
}

#[test]
fn airlock_accepts_keys_made_by_openssl() {
    let ws = Workspace::new();
    let key = ws.path("ossl.key");
    let public = ws.path("ossl.pub");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {0} && openssl pkey -in {0} -pubout -out {1}", key.display(), public.display()))
        .status()
        .unwrap();
    assert!(made.success());
    let dir = ws.safetensors_model("src");
    let sign = run(Command::new(model_signing())
        .args(["sign", "key"])
        .arg(&dir)
        .arg("--private_key")
        .arg(&key)
        .arg("--signature")
        .arg(dir.join("model.sig")));
    assert_eq!(sign.code, 0, "{}{}", sign.stdout, sign.stderr);
    ws.verify(&dir, &[&"--trust", &public]).ok();
    let bundle = ws.path("o.airlock");
    std::fs::remove_file(dir.join("model.sig")).unwrap();
    run(airlock()
        .arg("pack")
        .arg(&dir)
        .args(["--name", "o", "--version", "1.0.0", "--key"])
        .arg(&key)
        .arg("-o")
        .arg(&bundle))
    .ok();
    ws.verify(&bundle, &[&"--trust", &public]).ok();
}
