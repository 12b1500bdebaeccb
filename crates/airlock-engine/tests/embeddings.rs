//! all-MiniLM-L6-v2 embeddings against onnxruntime's (golden file made by
//! `scripts/reference/make-goldens.sh`, provenance inside it).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod support;

use airlock_engine::embed::cosine;
use serde_json::Value;

fn golden() -> (Vec<String>, Vec<Vec<f32>>) {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(support::golden("minilm_embeddings.json")).unwrap(),
    )
    .unwrap();
    let sentences = golden["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let vectors = golden["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (sentences, vectors)
}

#[test]
fn embeddings_match_the_reference_within_1e_4_cosine() {
    let model = support::minilm();
    let (sentences, want) = golden();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let got = model.embed(&texts).unwrap();
    assert_eq!(got.vectors.len(), want.len());
    for ((text, a), b) in texts.iter().zip(&got.vectors).zip(&want) {
        assert_eq!(a.len(), 384);
        let c = cosine(a, b);
        assert!(c >= 1.0 - 1e-4, "{text:?}: cosine {c}");
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
    }
}

#[test]
fn a_text_embeds_the_same_alone_and_in_a_batch() {
    let model = support::minilm();
    let (sentences, _) = golden();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = model.embed(&texts).unwrap();
    for (text, in_batch) in texts.iter().zip(&batch.vectors) {
        let alone = model.embed(&[text]).unwrap();
        let c = cosine(&alone.vectors[0], in_batch);
        assert!(c >= 1.0 - 1e-6, "{text:?}: cosine {c}");
    }
}

#[test]
fn long_input_is_truncated_to_max_seq_length() {
    let model = support::minilm();
    let long = "word ".repeat(1000);
    let ids = model.tokenize(&[long.as_str()]).unwrap().remove(0);
    assert_eq!(ids.len(), 256);
    let out = model.embed(&[long.as_str()]).unwrap();
    assert_eq!(out.tokens, 256);
}

#[test]
fn bad_requests_are_clear_errors() {
    let model = support::minilm();
    assert!(
        model
            .embed(&[])
            .unwrap_err()
            .to_string()
            .contains("no input")
    );
    let many = vec!["x"; 257];
    assert!(
        model
            .embed(&many)
            .unwrap_err()
            .to_string()
            .contains("at most 256")
    );
}
