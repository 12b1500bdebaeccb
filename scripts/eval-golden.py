#!/usr/bin/env python3
"""Writes an eval golden file: llama.cpp's own score of every answer of a suite's `choice` items.

The suite's `choice` items become llama-perplexity's --multiple-choice task file; llama-perplexity
scores each answer (the mean log-probability of its tokens after the question) and prints one
line per answer, a line of llama.cpp's that scripts/build-llama-cpp.sh switches on:

    airlock-answer<TAB>task<TAB>answer<TAB>mean log-probability<TAB>tokens

How llama-perplexity scores an item (the golden file records exactly this):
  - each answer is tokenised as `context + " " + answer`, with BOS only where the model's
    tokenizer.ggml.add_bos_token says so (SmolLM2: no BOS), special tokens parsed;
  - the tokens shared by all of an item's answers (the question and any common start of the
    answers) are the prefix; an answer's score is the mean log-probability of its tokens after
    that prefix, and `tokens` is how many there are.
llama-perplexity runs with flash attention on (as airlock's engine does), one KV buffer shared
by all sequences (which it forces) and as many sequences as the largest item has answers, so each
decode holds about one item. The scores depend on that shape at the level of llama.cpp's rounding
(quantised activations, f16 cache): for SmolLM2-135M Q4_1, flash attention off or many items per
decode move an answer's mean log-probability by up to about 0.2 (0.04 on average), and a float64
evaluation of the same dequantised weights differs from it by up to 0.3 (0.06 on average), so a
comparison with the golden file needs a tolerance of that order, or compares the chosen answers.

Items whose separator is not " " are refused (llama-perplexity always joins with one space), and
so are items where one answer starts with another (llama-perplexity would then read past the end
of the shorter answer's tokens).

Usage:
  scripts/eval-golden.py --suite FILE.jsonl --model MODEL.gguf [--llama-bin DIR] [--threads N]
                         -o OUT.json
  --llama-bin  directory holding llama-perplexity (default: built or found by
               scripts/build-llama-cpp.sh)
  --threads    CPU threads (default 2)

Standard library only.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_ANSWERS = 100  # llama-perplexity refuses tasks with more
ANSWER_LINE = re.compile(r"airlock-answer\t(\d+)\t(\d+)\t(\S+)\t(\d+)")


def fail(msg):
    sys.exit("eval-golden: " + msg)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_suite(path):
    """The suite's `choice` items, in order, as (id, context, choices, answer)."""
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        fail("%s is empty" % path)

    def parse(n, line):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            fail("%s:%d: not JSON: %s" % (path, n, e))
        if not isinstance(obj, dict):
            fail("%s:%d: not a JSON object" % (path, n))
        return obj

    header = parse(*lines[0])
    if header.get("airlock_eval") != 1:
        fail("%s:%d: the first line must be the header {\"airlock_eval\": 1, ...}" % (path, lines[0][0]))
    items, seen = [], set()
    for n, line in lines[1:]:
        obj = parse(n, line)
        if obj.get("type") != "choice":
            continue
        where = "%s:%d" % (path, n)
        item_id = obj.get("id")
        if not isinstance(item_id, str) or not item_id:
            fail("%s: a choice item needs a string id" % where)
        if item_id in seen:
            fail("%s: duplicate id %r" % (where, item_id))
        seen.add(item_id)
        where += " (%s)" % item_id
        context, choices, answer = obj.get("context"), obj.get("choices"), obj.get("answer")
        separator = obj.get("separator", " ")
        if separator != " ":
            fail("%s: separator %r: llama-perplexity joins context and answer with one space, so only "
                 "\" \" (the default) can have a golden score" % (where, separator))
        if not isinstance(context, str) or not context:
            fail("%s: context must be a non-empty string" % where)
        if (not isinstance(choices, list) or not 2 <= len(choices) <= MAX_ANSWERS
                or not all(isinstance(c, str) and c for c in choices)):
            fail("%s: choices must be 2 to %d non-empty strings" % (where, MAX_ANSWERS))
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            fail("%s: answer must index choices" % where)
        for a in range(len(choices)):
            for b in range(len(choices)):
                if a != b and choices[b].startswith(choices[a]):
                    fail("%s: choice %d %r starts with choice %d %r; llama-perplexity cannot score an "
                         "answer whose tokens are all shared with another's" % (where, b, choices[b], a, choices[a]))
        items.append((item_id, context, choices, answer))
    if not items:
        fail("%s has no choice items" % path)
    return items


def task_file(items):
    """llama-perplexity's --multiple-choice binary file (multiple_choice_score in perplexity.cpp):
    u32 n_task, u32 task_pos[n_task] (each task's byte offset in the file), then per task the
    question string, mc1 (answers and labels, one correct) and mc2 (empty). A string is u32
    byte length + UTF-8 bytes; answers are u32 n, n strings, n int32 labels. Little-endian."""

    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<I", len(b)) + b

    tasks = []
    for _, context, choices, answer in items:
        mc1 = struct.pack("<I", len(choices)) + b"".join(string(c) for c in choices)
        mc1 += struct.pack("<%di" % len(choices), *[int(i == answer) for i in range(len(choices))])
        mc2 = struct.pack("<I", 0)
        tasks.append(string(context) + mc1 + mc2)
    pos = 4 + 4 * len(tasks)
    offsets = []
    for t in tasks:
        offsets.append(pos)
        pos += len(t)
    return struct.pack("<I", len(tasks)) + struct.pack("<%dI" % len(tasks), *offsets) + b"".join(tasks)


def context_shape(items):
    """(-np, -c) for llama-perplexity. It multiplies -c by -np (one context per sequence) into one
    KV buffer shared by all sequences, and holds logits for every position of it; the whole of
    the largest task must fit. Each answer is its own sequence, so -np is the most answers in
    an item (at least llama-perplexity's own minimum, 4); the context is bounded by byte counts
    (a token is at least one byte, plus BOS and a space prefix)."""
    n_parallel = max(4, max(len(c) for _, _, c, _ in items))
    needed = max(sum(len(ctx.encode()) + 1 + len(a.encode()) + 2 for a in choices)
                 for _, ctx, choices, _ in items)
    total = max(512, needed)
    per_seq = -(-total // n_parallel)
    return n_parallel, per_seq, n_parallel * per_seq


def llama_bin_dir():
    try:
        root = subprocess.run(["bash", os.path.join(HERE, "build-llama-cpp.sh")], check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        fail("scripts/build-llama-cpp.sh failed")
    return os.path.join(root, "build", "bin")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--llama-bin")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()

    items = read_suite(args.suite)
    bin_dir = args.llama_bin or llama_bin_dir()
    exe = os.path.join(bin_dir, "llama-perplexity")
    if not os.access(exe, os.X_OK):
        fail("%s not found (scripts/build-llama-cpp.sh builds it)" % exe)
    version = subprocess.run([exe, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True).stdout.strip().splitlines()
    version = version[0] if version else "unknown"
    sdist = re.search(r"llama-cpp-python-([0-9][0-9.]*)", os.path.realpath(bin_dir))
    llama_cpp = ("llama_cpp_python %s sdist, " % sdist.group(1) if sdist else "") + version

    n_parallel, per_seq, n_ctx = context_shape(items)
    flags = ["--multiple-choice", "-t", str(args.threads), "-c", str(per_seq), "-np", str(n_parallel),
             "-b", str(n_ctx), "-fa", "on", "--log-colors", "off"]
    with tempfile.TemporaryDirectory(prefix="eval-golden-") as tmp:
        tasks_path = os.path.join(tmp, "tasks.bin")
        with open(tasks_path, "wb") as f:
            f.write(task_file(items))
        run = subprocess.run([exe, "-m", args.model, "-bf", tasks_path] + flags,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_tail = "\n".join((run.stderr + run.stdout).splitlines()[-25:])
    if run.returncode != 0:
        fail("llama-perplexity exited with %d:\n%s" % (run.returncode, log_tail))

    scores = {}
    for line in run.stdout.splitlines():
        m = ANSWER_LINE.search(line)
        if not m:
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if key in scores:
            fail("llama-perplexity scored task %d answer %d twice" % key)
        scores[key] = (float(m.group(3)), int(m.group(4)))
    if not scores:
        fail("llama-perplexity printed no airlock-answer lines: is it built by scripts/build-llama-cpp.sh "
             "(which switches the line on)?\n" + log_tail)

    out_items = []
    for t, (item_id, _, choices, _) in enumerate(items):
        missing = [s for s in range(len(choices)) if (t, s) not in scores]
        if missing:
            fail("llama-perplexity printed no score for item %s (task %d) answers %s\n%s"
                 % (item_id, t, missing, log_tail))
        out = []
        for s in range(len(choices)):
            mean, count = scores[(t, s)]
            if not math.isfinite(mean) or count < 1:
                fail("item %s answer %d: mean log-probability %r over %d tokens" % (item_id, s, mean, count))
            out.append({"mean_logprob": mean, "tokens": count})
        out_items.append({"id": item_id, "choices": out})
    extra = set(scores) - {(t, s) for t, (_, _, c, _) in enumerate(items) for s in range(len(c))}
    if extra:
        fail("llama-perplexity scored answers the suite does not have: %s" % sorted(extra))

    command = ["llama-perplexity", "-m", os.path.basename(args.model), "-bf", "TASKS.bin"] + flags
    golden = {
        "provenance": {
            "tool": "llama-perplexity --multiple-choice",
            "llama_cpp": llama_cpp,
            "model_file": os.path.basename(args.model),
            "model_sha256": sha256_file(args.model),
            "suite_file": os.path.basename(args.suite),
            "suite_sha256": sha256_file(args.suite),
            "command": " ".join(shlex.quote(a) for a in command),
            "task_file": "TASKS.bin: the suite's choice items in order, written by scripts/eval-golden.py",
            "note": "per-answer line enabled by scripts/build-llama-cpp.sh",
        },
        "items": out_items,
    }
    with open(args.out + ".part", "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(args.out + ".part", args.out)
    print("eval-golden: %d items, %d answers -> %s" % (len(out_items), len(scores), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
