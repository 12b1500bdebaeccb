//! Model files that are well formed (they would pass a bundle's signature and layout checks)
//! but hostile: each is refused with a clear error, and the process goes on to serve a good
//! model afterwards.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod support;

use airlock_engine::{
    ChatConfig, ChatModel, GenerateParams, Message, ModelFiles, Role, SamplingParams,
};
use airlock_testkit::gguf::MetaValue;
use airlock_testkit::gguf_edit::rewrite;

fn load_edited(dir: &std::path::Path, name: &str, edits: &[(&str, MetaValue)]) -> String {
    let path = dir.join(format!("{name}.gguf"));
    rewrite(&support::smollm2_path(), &path, edits).unwrap();
    let files = ModelFiles::single(name, &format!("{name}.gguf"), &path);
    ChatModel::load(&files, &ChatConfig::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn hostile_model_files_are_clear_errors_and_the_process_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let template = |t: &str| vec![("tokenizer.chat_template", MetaValue::Str(t.into()))];
    // (name, metadata edits, what the error must say)
    type Case<'a> = (&'a str, Vec<(&'a str, MetaValue)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "loops",
            template(
                "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
            ),
            "instruction budget",
        ),
        (
            "recurses",
            template("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}"),
            "chat template failed",
        ),
        (
            "python-internals",
            template(
                "{{ messages.__class__.__mro__[1].__subclasses__()[40]('/etc/passwd').read() }}",
            ),
            "chat template failed",
        ),
        (
            "os-escape",
            template("{{ cycler.__init__.__globals__.os.popen('id').read() }}"),
            "chat template failed",
        ),
        (
            "heads-do-not-divide",
            vec![("llama.attention.head_count", MetaValue::U32(7))],
            "llama.attention.head_count (7) is not a multiple of head_count_kv (3)",
        ),
        (
            "embedding-not-divisible",
            vec![
                ("llama.attention.head_count", MetaValue::U32(10)),
                ("llama.attention.head_count_kv", MetaValue::U32(5)),
            ],
            "embedding_length (576) is not a multiple of attention.head_count (10)",
        ),
        (
            "missing-layers",
            vec![("llama.block_count", MetaValue::U32(40))],
            "layer 30 has no tensors",
        ),
    ];
    for (name, edits, expect) in cases {
        let err = load_edited(dir.path(), name, &edits);
        assert!(err.starts_with(&format!("model {name}: ")), "{name}: {err}");
        assert!(err.contains(expect), "{name}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    // Still here: a good model loads and answers.
    let model = support::smollm2(&ChatConfig::default());
    let prompt = model
        .chat_prompt(&[Message::new(
            Role::User,
            "What is the capital of France? Answer with one word.",
        )])
        .unwrap();
    let params = GenerateParams {
        max_tokens: Some(8),
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let out = model
        .generate(prompt, params)
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}
