"""The official OpenAI and Anthropic Python SDKs asking a model that answers from collections,
unchanged but for their base URL and key: whole and streamed, each answer must cite the one
document that holds the answer, and only it. Exits non-zero with the failing check.

    sdk-rag.py BASE_URL KEY MODEL QUESTION DOCUMENT_SUFFIX

Prints {"passed": N, "answers": {...}} on success.
"""

import json
import sys

import anthropic
import openai

base, key, model, question, suffix = sys.argv[1:6]
messages = [{"role": "user", "content": question}]
checks = []
answers = {}


def check(name, ok, detail=""):
    checks.append(name)
    if not ok:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)


def cites_only_the_document(name, text, documents):
    answers[name] = {"text": text, "documents": documents}
    check(f"{name}: cites", len(documents) > 0, (text, documents))
    check(
        f"{name}: cites the document that holds the answer, and only it",
        all(d.endswith(suffix) for d in documents),
        (text, documents),
    )


oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
reply = oa.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48)
message = reply.choices[0].message
annotations = message.annotations or []
check("openai: annotations are url_citation", all(a.type == "url_citation" for a in annotations))
for a in annotations:
    span = message.content[a.url_citation.start_index : a.url_citation.end_index]
    check("openai: each annotation spans answer text", len(span) > 0, a)
cites_only_the_document(
    "openai", message.content, [a.url_citation.document for a in annotations]
)

text, documents = "", []
for chunk in oa.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=48, stream=True
):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    text += delta.content or ""
    for a in getattr(delta, "annotations", None) or []:
        documents.append(a["url_citation"]["document"])
cites_only_the_document("openai stream", text, documents)
check("openai: streamed and whole answers agree", text == message.content, (text, message.content))

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
# This SDK version has no temperature argument; the Messages API still takes the field.
GREEDY = {"temperature": 0}
reply = an.messages.create(model=model, messages=messages, extra_body=GREEDY, max_tokens=48)
block = reply.content[0]
citations = block.citations or []
check(
    "anthropic: citations are search_result_location",
    all(c.type == "search_result_location" for c in citations),
)
check("anthropic: each citation quotes its source", all(c.cited_text for c in citations))
cites_only_the_document("anthropic", block.text, [c.source for c in citations])

with an.messages.stream(model=model, messages=messages, extra_body=GREEDY, max_tokens=48) as stream:
    final = stream.get_final_message()
block = final.content[0]
cites_only_the_document("anthropic stream", block.text, [c.source for c in block.citations or []])

print(json.dumps({"passed": len(checks), "answers": answers}))
