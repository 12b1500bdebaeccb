//! CycloneDX 1.6 SBOM (`sbom.cdx.json`): the model as a `machine-learning-model` component
//! with a model card section, and each file as a `file` component with its SHA-256.

use serde_json::{Value, json};

use crate::digest::Sha256Digest;
use crate::manifest::AirlockPredicate;

/// One payload file for the SBOM.
pub struct SbomFile<'a> {
    /// Path in the bundle.
    pub path: &'a str,
    /// Role (`weights`, `tokenizer`, ...).
    pub role: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Whole-file digest.
    pub sha256: Sha256Digest,
}

/// Builds the SBOM JSON. Its serial number is derived from the file digests, so the same
/// inputs give the same bytes.
pub fn build(info: &AirlockPredicate, files: &[SbomFile<'_>]) -> Value {
    let mut seed = Vec::new();
    for f in files {
        seed.extend_from_slice(f.path.as_bytes());
        seed.extend_from_slice(&f.sha256.0);
    }
    let mut id = Sha256Digest::of(&seed).0;
    // RFC 9562 version 8 (custom, here name-based on SHA-256) with the RFC 4122 variant.
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    let h = hex::encode(&id[..16]);
    let serial = format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    let model = &info.model;
    let mut properties = vec![
        json!({"name": "airlock:kind", "value": info.kind}),
        json!({"name": "airlock:format", "value": model.format}),
        json!({"name": "airlock:parameters", "value": model.parameters.to_string()}),
        json!({"name": "airlock:tensors", "value": model.tensors.to_string()}),
    ];
    let optional = [
        ("airlock:quantization", model.quantization.clone()),
        (
            "airlock:context_length",
            model.context_length.map(|c| c.to_string()),
        ),
        (
            "airlock:chat_template_sha256",
            model.chat_template_sha256.clone(),
        ),
        ("airlock:source", info.source.clone()),
        ("airlock:revision", info.revision.clone()),
        ("airlock:parent", info.parent.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            properties.push(json!({"name": name, "value": value}));
        }
    }
    let mut component = json!({
        "type": "machine-learning-model",
        "bom-ref": "model",
        "name": info.name,
        "version": info.version,
        "modelCard": {
            "modelParameters": {
                "task": if info.kind == "embedding" { "feature-extraction" } else { "text-generation" },
                "architectureFamily": model.architecture.clone().unwrap_or_default(),
                "modelArchitecture": model.architecture.clone().unwrap_or_default(),
            },
            "quantitativeAnalysis": {
                "performanceMetrics": info.evals.iter().map(|e| json!({"type": "eval-suite", "slice": e.path, "value": e.cases.to_string()})).collect::<Vec<_>>(),
            },
        },
        "properties": properties,
    });
    if let Some(license) = &info.license {
        component["licenses"] = json!([{"expression": license}]);
    }
    let file_components: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "type": "file",
                "bom-ref": format!("file:{}", f.path),
                "name": f.path,
                "hashes": [{"alg": "SHA-256", "content": f.sha256.to_hex()}],
                "properties": [{"name": "airlock:role", "value": f.role}, {"name": "airlock:size", "value": f.size.to_string()}],
            })
        })
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial,
        "version": 1,
        "metadata": {
            "timestamp": info.created,
            "tools": {"components": [{"type": "application", "name": "airlock", "version": env!("CARGO_PKG_VERSION")}]},
            "component": component,
        },
        "components": file_components,
        "dependencies": [{"ref": "model", "dependsOn": files.iter().map(|f| format!("file:{}", f.path)).collect::<Vec<_>>()}],
    })
}
