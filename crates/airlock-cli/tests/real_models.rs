//! The default models, end to end: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2
//! (safetensors directory), fetched by `scripts/fetch-models.sh`.

use crate::support::*;

#[test]
fn smollm2_gguf_packs_verifies_and_reports_its_facts() {
    let ws = Workspace::new();
    let gguf = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bundle = ws.path("smollm2.airlock");
    run(airlock()
        .arg("pack")
        .arg(&gguf)
        .args([
            "--name",
            "smollm2",
            "--version",
            "1.0.0",
            "--license",
            "Apache-2.0",
            "--key",
        ])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(&bundle))
    .ok();
    let v = ws.verify(&bundle, &[]).ok().json();
    assert_eq!(v["name"], "smollm2");
    let info = run(airlock().arg("inspect").arg(&bundle).arg("--json"))
        .ok()
        .json();
    assert_eq!(info["kind"], "llm");
    assert_eq!(info["model"]["architecture"], "llama");
    assert_eq!(info["model"]["quantization"], "Q4_1");
    assert_eq!(info["model"]["context_length"], 8192);
    assert_eq!(info["model"]["parameters"], 134_515_008u64);
    assert!(info["model"]["chat_template_sha256"].is_string());
    let dir = ws.unpack(&bundle, "unpacked");
    assert_sha256sums_pass(&dir);
}

#[test]
fn minilm_directory_packs_verifies_and_passes_the_reference_verifier() {
    let ws = Workspace::new();
    let src = models_dir().join("all-minilm-l6-v2");
    let bundle = ws.path("minilm.airlock");
    let packed = run(airlock()
        .arg("pack")
        .arg(&src)
        .args([
            "--name",
            "all-minilm-l6-v2",
            "--version",
            "1.0.0",
            "--license",
            "Apache-2.0",
            "--json",
            "--key",
        ])
        .arg(ws.key("publisher"))
        .arg("-o")
        .arg(&bundle))
    .ok()
    .json();
    assert_eq!(packed["kind"], "embedding");
    assert_eq!(packed["skipped"], serde_json::json!([".gitattributes"]));
    assert_eq!(packed["model"]["architecture"], "BertModel");
    ws.verify(&bundle, &[]).ok();
    let dir = ws.unpack(&bundle, "unpacked");
    assert_sha256sums_pass(&dir);
    let oms = oms_verify(&dir, &ws.public("publisher"));
    assert_eq!(oms.code, 0, "{}{}", oms.stdout, oms.stderr);
}
