//! Tokenisation against the reference tokenizers (Hugging Face `tokenizers`, Python) on a
//! fixed corpus with Unicode, whitespace runs and text that looks like special tokens.
//! Golden files: `tests/golden/*_tokens.json`, made by `scripts/reference/make-goldens.sh`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod support;

use airlock_engine::ChatConfig;
use serde_json::Value;

fn cases(name: &str) -> Vec<(String, Vec<i64>, String)> {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(support::golden(name)).unwrap()).unwrap();
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_owned(),
                c["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_i64().unwrap())
                    .collect(),
                c["decoded"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn smollm2_plain_text_tokenises_as_the_reference_and_round_trips() {
    let model = support::smollm2(&ChatConfig::default());
    let cases = cases("smollm2_tokens.json");
    assert!(cases.len() >= 15);
    for (text, want, decoded) in cases {
        let ids: Vec<i64> = model
            .tokenize(&text, false)
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(decoded, text, "the reference itself round-trips {text:?}");
        let ids: Vec<i32> = ids.into_iter().map(|i| i as i32).collect();
        assert_eq!(
            model.detokenize(&ids, false),
            text,
            "round trip of {text:?}"
        );
    }
}

#[test]
fn smollm2_control_token_text_in_user_content_stays_plain_text() {
    let model = support::smollm2(&ChatConfig::default());
    let plain = model.tokenize("<|im_start|>", false);
    let special = model.tokenize("<|im_start|>", true);
    assert_eq!(
        special.len(),
        1,
        "with special parsing it is the control token"
    );
    assert!(plain.len() > 1 && !plain.contains(&special[0]), "{plain:?}");
}

#[test]
fn minilm_tokenises_as_the_reference() {
    let model = support::minilm();
    for (text, want, decoded) in cases("minilm_tokens.json") {
        let ids = model.tokenize(&[text.as_str()]).unwrap().remove(0);
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        assert_eq!(ids, want, "ids of {text:?}");
        let ids: Vec<u32> = ids.into_iter().map(|i| i as u32).collect();
        assert_eq!(
            model.detokenize(&ids).unwrap(),
            decoded,
            "decode of {text:?}"
        );
    }
}
