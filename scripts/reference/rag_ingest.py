"""The ingest benchmark's anchor: the pipeline a team would write in Python for the same job.

Reads every Markdown file of a directory, packs its paragraphs into chunks of at most the
model's sequence length in its tokenizer's tokens (longer paragraphs cut into token windows),
embeds them with onnxruntime (the model's ONNX graph from bert_onnx.py, mean-pooled and
normalised as sentence-transformers does) in batches of 32, adds them to a usearch HNSW index
(cosine, f16, the same connectivity and expansion as airlock's) and keeps the chunk texts in
SQLite beside it; then saves both.

    rag_ingest.py MODEL_DIR ONNX_PATH CORPUS_DIR OUT_DIR THREADS

Prints one JSON object: documents, chunks, seconds, chunks_per_s.
"""

import json
import os
import sqlite3
import sys
import time

import numpy as np
from tokenizers import Tokenizer
from usearch.index import Index

import bert_onnx

BATCH = 32


def chunks(text, tokenizer, budget):
    """Paragraphs packed into chunks of at most `budget` tokens."""
    out, current, used = [], [], 0
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        ids = tokenizer.encode(paragraph, add_special_tokens=False).ids
        if len(ids) > budget:
            if current:
                out.append("\n\n".join(current))
                current, used = [], 0
            for start in range(0, len(ids), budget):
                out.append(tokenizer.decode(ids[start:start + budget]))
            continue
        if used + len(ids) > budget and current:
            out.append("\n\n".join(current))
            current, used = [], 0
        current.append(paragraph)
        used += len(ids)
    if current:
        out.append("\n\n".join(current))
    return out


def main():
    model_dir, onnx_path, corpus, out, threads = sys.argv[1:6]
    threads = int(threads)
    config = json.load(open(os.path.join(model_dir, "config.json")))
    # sentence-transformers' sequence length, as the model's card sets it.
    max_len = json.load(open(os.path.join(model_dir, "sentence_bert_config.json")))["max_seq_length"]
    started = time.monotonic()
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    counting = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    counting.no_truncation()
    counting.no_padding()
    sess = bert_onnx.session(onnx_path, threads)
    os.makedirs(out, exist_ok=True)
    db = sqlite3.connect(os.path.join(out, "chunks.sqlite"))
    db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, document TEXT, text TEXT)")
    index = Index(ndim=config["hidden_size"], metric="cos", dtype="f16", connectivity=16,
                  expansion_add=128, expansion_search=128)
    documents, next_id, pending = 0, 1, []

    def flush():
        nonlocal pending
        if not pending:
            return
        vectors = bert_onnx.embed(sess, tokenizer, [t for _, _, t in pending], max_len)
        index.add(np.array([i for i, _, _ in pending], dtype=np.uint64), vectors, threads=threads)
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?)", pending)
        pending = []

    for name in sorted(os.listdir(corpus)):
        if not name.endswith(".md"):
            continue
        text = open(os.path.join(corpus, name), encoding="utf-8").read()
        documents += 1
        for piece in chunks(text, counting, max_len - 2):
            pending.append((next_id, name, piece))
            next_id += 1
            if len(pending) == BATCH:
                flush()
    flush()
    db.commit()
    db.close()
    index.save(os.path.join(out, "vectors.usearch"))
    seconds = time.monotonic() - started
    print(json.dumps({"documents": documents, "chunks": next_id - 1, "seconds": seconds,
                      "chunks_per_s": (next_id - 1) / seconds}))


if __name__ == "__main__":
    main()
