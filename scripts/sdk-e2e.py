"""The official OpenAI and Anthropic Python SDKs against `airlock serve`, unchanged but for
their base URL and key. Exits non-zero with the failing check on any mismatch.

    sdk-e2e.py BASE_URL KEY CHAT_ALIAS EMBED_ALIAS

BASE_URL is the server root (http://127.0.0.1:PORT). Installed by scripts/setup-test-tools.sh:
openai and anthropic from PyPI.
"""

import json
import math
import sys

import anthropic
import openai

base, key, chat, embed = sys.argv[1:5]
QUESTION = "What is the capital of France? Answer with one word."
checks = []


def check(name, ok, detail=""):
    checks.append(name)
    if not ok:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)


oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)

models = [m.id for m in oa.models.list()]
check("openai models.list names both aliases", chat in models and embed in models, models)

reply = oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
)
text = reply.choices[0].message.content
check("openai chat answers Paris", "Paris" in text, text)
check("openai chat finish_reason stop", reply.choices[0].finish_reason == "stop", reply)
check("openai chat usage", reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 0, reply.usage)
again = oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
)
check("openai chat asked again answers the same", again.choices[0].message.content == text, again)
check(
    "openai chat asked again reads all but one prompt token from the cache",
    again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1,
    again.usage,
)

pieces, usage, finish = [], None, None
for chunk in oa.chat.completions.create(
    model=chat,
    messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": QUESTION}],
    temperature=0,
    max_completion_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
check("openai chat stream answers Paris", "Paris" in streamed, streamed)
check("openai chat stream has several chunks", len(pieces) > 2, pieces)
check("openai chat stream finish_reason", finish == "stop", finish)
check("openai chat stream include_usage", usage is not None and usage.completion_tokens > 0, usage)

seeded = [
    oa.chat.completions.create(
        model=chat, messages=[{"role": "user", "content": "Name a colour."}], temperature=0.9, seed=42, max_tokens=12
    ).choices[0].message.content
    for _ in range(2)
]
check("openai same seed, same answer", seeded[0] == seeded[1], seeded)

stopped = oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": QUESTION}], temperature=0, stop=["Paris"]
)
check("openai stop sequence cuts the answer", "Paris" not in stopped.choices[0].message.content, stopped)

completion = oa.completions.create(model=chat, prompt="The capital of France is", temperature=0, max_tokens=8)
check("openai completions", "Paris" in completion.choices[0].text, completion.choices[0].text)
streamed_completion = "".join(
    c.choices[0].text
    for c in oa.completions.create(model=chat, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True)
    if c.choices
)
check("openai completions stream equals non-stream", streamed_completion == completion.choices[0].text, streamed_completion)

# The SDK asks for base64 unless told otherwise, and decodes it.
vectors = oa.embeddings.create(model=embed, input=["The cat sat on the mat.", "A feline rested on the rug."])
check("openai embeddings count", len(vectors.data) == 2, vectors)
dims = len(vectors.data[0].embedding)
check("openai embeddings 384 dimensions", dims == 384, dims)
norm = math.sqrt(sum(v * v for v in vectors.data[0].embedding))
check("openai embeddings normalised", abs(norm - 1) < 1e-3, norm)
floats = oa.embeddings.create(model=embed, input="The cat sat on the mat.", encoding_format="float")
check(
    "openai float and base64 encodings agree",
    max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors.data[0].embedding)) < 1e-6,
)
cosine = sum(a * b for a, b in zip(vectors.data[0].embedding, vectors.data[1].embedding))
check("openai embeddings: paraphrases are close", cosine > 0.5, cosine)

try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="alk-0000-wrong", max_retries=0).models.list()
    check("openai wrong key refused", False, "no error")
except openai.AuthenticationError as e:
    check("openai wrong key refused", e.status_code == 401)
# Several answers: seeded, the set is reproducible and its members differ.
sets = [
    oa.chat.completions.create(
        model=chat, messages=[{"role": "user", "content": "Name a colour."}], n=3, seed=7, temperature=1.0, max_tokens=12
    )
    for _ in range(2)
]
texts = [[c.message.content for c in s.choices] for s in sets]
check("openai n=3 gives three choices in order", [c.index for c in sets[0].choices] == [0, 1, 2], sets[0])
check("openai n=3 with a seed is reproducible", texts[0] == texts[1], texts)
check("openai n=3 choices differ", len(set(texts[0])) > 1, texts)
check(
    "openai n=3 usage counts every choice",
    sets[0].usage.completion_tokens >= 3 and sets[0].usage.prompt_tokens > 10,
    sets[0].usage,
)
try:
    oa.chat.completions.create(model=chat, messages=[{"role": "user", "content": "hi"}], n=2, stream=True)
    check("openai streamed n=2 refused", False, "no error")
except openai.BadRequestError as e:
    check("openai streamed n=2 refused", "n" in str(e))

# Log-probabilities: each token's, with the alternatives asked for; greedy picks the first.
scored = oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16, logprobs=True, top_logprobs=3
)
content = scored.choices[0].logprobs.content
check("openai logprobs cover the answer", "".join(t.token for t in content) == scored.choices[0].message.content, content)
check(
    "openai logprobs: three alternatives, the greedy token first, all <= 0",
    all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in content),
    content,
)
check(
    "openai logprobs: alternatives in order",
    all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob for t in content),
    content,
)
pieces = []
for chunk in oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16, logprobs=True,
    top_logprobs=3, stream=True,
):
    for choice in chunk.choices:
        if choice.logprobs and choice.logprobs.content:
            pieces.extend(choice.logprobs.content)
check(
    "openai streamed logprobs equal the whole answer's",
    [(t.token, round(t.logprob, 5)) for t in pieces] == [(t.token, round(t.logprob, 5)) for t in content],
    pieces,
)
text_scored = oa.completions.create(model=chat, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=2)
lp = text_scored.choices[0].logprobs
check(
    "openai completions logprobs",
    "".join(lp.tokens) == text_scored.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    and all(len(t) == 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0,
    lp,
)

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
# This SDK version has no temperature argument; the Messages API still takes the field.
GREEDY = {"temperature": 0}
message = an.messages.create(
    model=chat, max_tokens=32, extra_body=GREEDY, messages=[{"role": "user", "content": QUESTION}]
)
check("anthropic messages answers Paris", "Paris" in message.content[0].text, message)
check("anthropic stop_reason end_turn", message.stop_reason == "end_turn", message.stop_reason)
# The same conversation as the OpenAI calls', so all but its last token come from the cache.
check(
    "anthropic usage",
    message.usage.input_tokens == 1 and message.usage.cache_read_input_tokens > 10 and message.usage.output_tokens > 0,
    message.usage,
)

counted = an.messages.count_tokens(model=chat, messages=[{"role": "user", "content": QUESTION}])
check(
    "anthropic count_tokens equals the prompt the model read",
    counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens,
    (counted, message.usage),
)

events = []
with an.messages.stream(
    model=chat, max_tokens=32, extra_body=GREEDY, system="You are brief.", messages=[{"role": "user", "content": QUESTION}]
) as stream:
    for event in stream:
        events.append(event.type)
    final = stream.get_final_message()
check("anthropic stream answers Paris", "Paris" in final.content[0].text, final)
for name in ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]:
    check(f"anthropic stream has {name}", name in events, events)
check(
    "anthropic stream usage",
    final.usage.output_tokens > 0 and final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) > 10,
    final.usage,
)

limited = an.messages.create(
    model=chat, max_tokens=3, extra_body=GREEDY, messages=[{"role": "user", "content": "Count from one to twenty."}]
)
check("anthropic max_tokens stop_reason", limited.stop_reason == "max_tokens", limited.stop_reason)
sequence = an.messages.create(
    model=chat, max_tokens=32, extra_body=GREEDY, stop_sequences=["Paris"], messages=[{"role": "user", "content": QUESTION}]
)
check(
    "anthropic stop_sequence reported",
    sequence.stop_reason == "stop_sequence" and sequence.stop_sequence == "Paris",
    sequence,
)

try:
    anthropic.Anthropic(base_url=base, api_key="alk-0000-wrong", max_retries=0).messages.create(
        model=chat, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    check("anthropic wrong key refused", False, "no error")
except anthropic.AuthenticationError as e:
    check("anthropic wrong key refused", e.status_code == 401)

print(json.dumps({"passed": len(checks), "checks": checks}))
