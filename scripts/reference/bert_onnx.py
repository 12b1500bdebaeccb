"""A sentence-transformers BERT model (config.json + model.safetensors) as an ONNX graph.

The graph is Hugging Face's BertModel written out op by op (no torch needed): embeddings,
LayerNorm, multi-head self-attention with the padding mask, erf GELU, and the last hidden
state as output. Mean pooling and normalisation are done by `embed()` as sentence-transformers
does them. onnxruntime runs it: it is the reference for the engine's golden embeddings and
the anchor of its embedding benchmark.
"""

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file


def build(model_dir: str, out_path: str) -> None:
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    dh = hidden // heads
    eps = float(config["layer_norm_eps"])
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def w(name, transpose=False):
        array = weights[prefix + name].astype(np.float32)
        return const(name + (".T" if transpose else ""), array.T.copy() if transpose else array)

    counter = [0]

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x, name):
        return node("Add", [node("MatMul", [x, w(name + ".weight", True)]), w(name + ".bias")])

    def layer_norm(x, name):
        return node("LayerNormalization", [x, w(name + ".weight"), w(name + ".bias")], axis=-1, epsilon=eps)

    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    seq_len = node("Gather", [node("Shape", [ids]), const("one_index", np.array(1, dtype=np.int64))], axis=0)
    positions = node("Slice", [w("embeddings.position_embeddings.weight"), const("zero_1d", np.array([0], dtype=np.int64)),
                               node("Unsqueeze", [seq_len, const("axes0", np.array([0], dtype=np.int64))]),
                               const("axis0", np.array([0], dtype=np.int64))])
    x = node("Add", [node("Gather", [w("embeddings.word_embeddings.weight"), ids], axis=0), positions])
    x = node("Add", [x, node("Gather", [w("embeddings.token_type_embeddings.weight"), types], axis=0)])
    x = layer_norm(x, "embeddings.LayerNorm")

    # (1 - mask) * most-negative float, shaped [B, 1, 1, L], as BertModel's extended mask.
    mask_f = node("Cast", [mask], to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("f_one", np.array(1.0, dtype=np.float32)), mask_f]),
                        const("f_min", np.array(np.finfo(np.float32).min, dtype=np.float32))])
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], dtype=np.int64))])
    split_shape = const("split_shape", np.array([0, 0, heads, dh], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(dh), dtype=np.float32))
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        def heads_of(t, perm):
            return node("Transpose", [node("Reshape", [t, split_shape])], perm=perm)
        q = heads_of(linear(x, p + "attention.self.query"), [0, 2, 1, 3])
        k = heads_of(linear(x, p + "attention.self.key"), [0, 2, 3, 1])
        v = heads_of(linear(x, p + "attention.self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), bias])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(node("Add", [linear(ctx, p + "attention.output.dense"), x]), p + "attention.output.LayerNorm")
        up = linear(x, p + "intermediate.dense")
        gelu = node("Mul", [node("Mul", [up, const(f"half_{n}", np.array(0.5, dtype=np.float32))]),
                            node("Add", [const(f"one_{n}", np.array(1.0, dtype=np.float32)),
                                         node("Erf", [node("Mul", [up, const(f"rsqrt2_{n}", np.array(1 / np.sqrt(2), dtype=np.float32))])])])])
        x = layer_norm(node("Add", [linear(gelu, p + "output.dense"), x]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes, "bert",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in (ids, mask, types)],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def session(path: str, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def embed(sess, tokenizer, texts, max_len: int, normalize: bool = True) -> np.ndarray:
    """sentence-transformers' encode(): pad to the longest, mean-pool over the mask, L2-normalise."""
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.zeros_like(ids)
    (hidden,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled
