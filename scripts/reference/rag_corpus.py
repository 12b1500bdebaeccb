"""Builds the retrieval evaluation's corpus and questions from PostgreSQL's HTML manual (the
Debian package postgresql-doc-15).

Every section (a page's h1, h2 or h3 and the text up to the next of those) becomes one
Markdown document holding its text *without its heading*; the heading, its numbering removed,
becomes a question whose answer is that document. So a question never finds its answer by the
words of its own heading: only by what the section says.

    rag_corpus.py HTML_DIR OUT_DIR QUESTIONS [LIMIT_SECTIONS]

Writes OUT_DIR/*.md and OUT_DIR/../questions.jsonl ({"query", "document"}), QUESTIONS of
them, chosen with a fixed seed among sections with at least 300 characters of text.
"""

import json
import os
import random
import re
import sys
from html.parser import HTMLParser

SKIP_CLASSES = {"navheader", "navfooter", "toc", "footnotes"}
HEADINGS = {"h1", "h2", "h3"}
BLOCKS = {"p", "li", "pre", "td", "th", "dt", "dd", "caption", "blockquote"}


class Sections(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections = []  # (heading, [paragraphs])
        self.skip_depth = 0
        self.stack = []
        self.heading = None
        self.text = []
        self.block = []

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        self.stack.append((tag, bool(classes & SKIP_CLASSES)))
        if classes & SKIP_CLASSES:
            self.skip_depth += 1
        if self.skip_depth:
            return
        if tag in HEADINGS:
            self.flush_block()
            self.heading = []
        elif tag in BLOCKS:
            self.flush_block()

    def handle_endtag(self, tag):
        while self.stack:
            open_tag, skipping = self.stack.pop()
            if skipping:
                self.skip_depth -= 1
            if open_tag == tag:
                break
        if self.skip_depth:
            return
        if tag in HEADINGS and self.heading is not None:
            title = " ".join("".join(self.heading).split())
            self.heading = None
            self.sections.append((title, []))
        elif tag in BLOCKS:
            self.flush_block()

    def handle_data(self, data):
        if self.skip_depth:
            return
        if self.heading is not None:
            self.heading.append(data)
        else:
            self.block.append(data)

    def flush_block(self):
        text = " ".join("".join(self.block).split())
        self.block = []
        if text and self.sections:
            self.sections[-1][1].append(text)


def main():
    html_dir, out_dir, questions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    os.makedirs(out_dir, exist_ok=True)
    candidates = []
    written = 0
    for name in sorted(os.listdir(html_dir)):
        if not name.endswith(".html"):
            continue
        parser = Sections()
        parser.feed(open(os.path.join(html_dir, name), encoding="utf-8", errors="replace").read())
        for n, (heading, paragraphs) in enumerate(parser.sections):
            body = "\n\n".join(paragraphs)
            if len(body) < 80:
                continue
            document = f"{name[:-5]}--{n:02d}.md"
            with open(os.path.join(out_dir, document), "w", encoding="utf-8") as f:
                f.write(body + "\n")
            written += 1
            query = re.sub(r"^[A-Z]?[0-9.]+\s+", "", heading).strip()
            if len(body) >= 300 and len(query) >= 4:
                candidates.append({"query": query, "document": document})
            if limit and written >= limit:
                break
        if limit and written >= limit:
            break
    # One question per heading text: the same heading on many pages has no single answer.
    counts = {}
    for c in candidates:
        counts[c["query"].lower()] = counts.get(c["query"].lower(), 0) + 1
    unique = [c for c in candidates if counts[c["query"].lower()] == 1]
    random.Random(20261129).shuffle(unique)
    path = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "questions.jsonl")
    with open(path, "w") as f:
        for c in unique[:questions]:
            f.write(json.dumps(c) + "\n")
    print(json.dumps({"documents": written, "questions": min(questions, len(unique))}))


if __name__ == "__main__":
    main()
