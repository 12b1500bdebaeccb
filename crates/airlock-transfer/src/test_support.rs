//! Genuine bundles for tests, packed and signed as `airlock pack` does.

use std::path::Path;

use airlock_bundle::{Limits, NoProgress, PackOptions, PrivateKey};

/// A packed bundle and what its announce carries.
pub(crate) struct Genuine {
    pub(crate) signature: Vec<u8>,
    pub(crate) digest: [u8; 32],
    pub(crate) size: u64,
}

/// Packs a model of `weights` bytes that repeat nowhere, with a document whose name is too
/// long for ustar (so the tar has a PAX header, as real bundles with long paths do).
pub(crate) fn genuine_bundle(dir: &Path, weights: usize) -> Genuine {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..weights)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let header =
        format!(r#"{{"w":{{"dtype":"U8","shape":[{weights}],"data_offsets":[0,{weights}]}}}}"#);
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(src.join("model.safetensors"), file).unwrap();
    std::fs::write(
        src.join("config.json"),
        r#"{"architectures":["BertModel"],"max_position_embeddings":512}"#,
    )
    .unwrap();
    std::fs::write(src.join(format!("{}.md", "n".repeat(120))), "# notes\n").unwrap();
    let key = PrivateKey::generate().unwrap();
    let path = dir.join("tiny_1.0.0.airlock");
    let options = PackOptions {
        name: "tiny".into(),
        version: "1.0.0".into(),
        kind: Some("embedding".into()),
        license: Some("Apache-2.0".into()),
        ..PackOptions::default()
    };
    airlock_bundle::pack(
        &src,
        &options,
        &[key],
        &path,
        &Limits::default(),
        &NoProgress,
    )
    .unwrap();
    let (signature, digest, size) =
        crate::sender::bundle_identity(&path, &Limits::default()).unwrap();
    Genuine {
        signature,
        digest: digest.0,
        size,
    }
}
