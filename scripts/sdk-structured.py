"""Structured output through the official SDKs' own helpers: OpenAI's
`chat.completions.parse(response_format=<pydantic model>)` and Anthropic's
`messages.parse(output_format=<pydantic model>)`, on twenty prompts and schemas (nested
objects, arrays, enums, optional and required fields), streamed and not; then schemas the
server must refuse with a 400 that names the reason. Exits non-zero with the failing check.

    sdk-structured.py BASE_URL KEY CHAT_ALIAS

Prints {"passed": N, "openai": V, "anthropic": V, "checks": [...]} with the SDK versions used.
"""

import enum
import json
import sys
from typing import List, Literal, Optional

import anthropic
import openai
import pydantic
from pydantic import BaseModel

base, key, chat = sys.argv[1:4]
checks = []


failures = []


def check(name, ok, detail="", fatal=True):
    checks.append(name)
    if not ok:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        failures.append(name)
        if fatal:
            sys.exit(1)


class Colour(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class City(BaseModel):
    name: str
    country: str
    population_millions: int


class Person(BaseModel):
    name: str
    age: int
    email_verified: bool


class Address(BaseModel):
    street: str
    city: str
    postcode: str


class Customer(BaseModel):
    name: str
    address: Address


class Recipe(BaseModel):
    title: str
    ingredients: List[str]
    minutes: int


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


class Fruit(BaseModel):
    name: str
    colour: Colour


class Step(BaseModel):
    order: int
    action: str


class Plan(BaseModel):
    goal: str
    steps: List[Step]


class Book(BaseModel):
    title: str
    author: str
    year: int
    genres: List[str]


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: Literal["sunny", "cloudy", "rainy", "snowy"]


class Answer(BaseModel):
    answer: str
    sources: Optional[List[str]]


class Ticket(BaseModel):
    title: str
    priority: Literal["low", "medium", "high"]
    tags: List[str]


class Point(BaseModel):
    x: int
    y: int


class Shape(BaseModel):
    kind: Literal["triangle", "square"]
    corners: List[Point]


class Meeting(BaseModel):
    topic: str
    attendees: List[str]
    room: Optional[str]


class Product(BaseModel):
    name: str
    price: float
    in_stock: bool


class Order(BaseModel):
    order_id: str
    items: List[Product]


class Translation(BaseModel):
    source_language: str
    target_language: str
    text: str


class Quiz(BaseModel):
    question: str
    choices: List[str]
    correct_index: int


class Team(BaseModel):
    name: str
    lead: Person
    members: List[Person]


class Flag(BaseModel):
    country: str
    colours: List[Colour]


class Summary(BaseModel):
    title: str
    bullet_points: List[str]
    word_count: int


CASES = [
    ("Describe the city of Paris.", City),
    ("Invent a person called Ana who is 34.", Person),
    ("Give the address of a customer named Bob in London.", Customer),
    ("Give a simple recipe for pancakes.", Recipe),
    ("Classify the sentiment of: I love this product!", Sentiment),
    ("Name a fruit and its colour.", Fruit),
    ("Plan how to bake bread in three steps.", Plan),
    ("Describe a famous novel.", Book),
    ("Report the weather in Oslo in winter.", Weather),
    ("What is two plus two?", Answer),
    ("File a support ticket titled 'Login broken', priority high, tagged login and bug.", Ticket),
    ("Describe a square with its corners.", Shape),
    ("Schedule a meeting about the budget.", Meeting),
    ("Describe a laptop for sale.", Product),
    ("Create an order with two products.", Order),
    ("Translate 'good morning' into French.", Translation),
    ("Write a quiz question about the planets.", Quiz),
    ("Describe a small software team.", Team),
    ("Describe the flag of France.", Flag),
    ("Summarise the benefits of exercise.", Summary),
]
assert len({model for _, model in CASES}) == 20

oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
# Greedy, with a mild repetition penalty: a 135M-parameter model otherwise tends to repeat
# an array item until the length limit. (This SDK version has no temperature argument on the
# Anthropic side; the Messages API still takes the field.)
GREEDY = {"temperature": 0, "repetition_penalty": 1.2}
OPENAI_GREEDY = {"repetition_penalty": 1.2}

for prompt, model in CASES:
    messages = [{"role": "user", "content": prompt}]
    # Every case runs; the failures are listed together at the end.
    try:
        completion = oa.chat.completions.parse(
            model=chat, messages=messages, response_format=model, temperature=0, max_completion_tokens=400,
            extra_body=OPENAI_GREEDY,
        )
        parsed = completion.choices[0].message.parsed
        check(f"openai parse {model.__name__}", isinstance(parsed, model), completion.choices[0].message, False)
    except openai.LengthFinishReasonError as e:
        check(f"openai parse {model.__name__}", False, e.completion.choices[0].message.content[:300], False)
    try:
        message = an.messages.parse(
            model=chat, max_tokens=400, extra_body=GREEDY, messages=messages, output_format=model
        )
        check(f"anthropic parse {model.__name__}", isinstance(message.parsed_output, model), message.content, False)
    except pydantic.ValidationError as e:
        # The SDK parses whatever text came back, cut short by max_tokens or not.
        check(f"anthropic parse {model.__name__}", False, str(e)[:300], False)
check("every schema parsed through both SDKs", not failures, failures)

# Streamed: the SDK assembles and parses the deltas itself.
with oa.chat.completions.stream(
    model=chat, messages=[{"role": "user", "content": "Describe the city of Rome."}], response_format=City,
    temperature=0, max_completion_tokens=400, extra_body=OPENAI_GREEDY,
) as stream:
    final = stream.get_final_completion()
check("openai stream parse", isinstance(final.choices[0].message.parsed, City), final)
with an.messages.stream(
    model=chat, max_tokens=400, extra_body=GREEDY, messages=[{"role": "user", "content": "Describe the city of Rome."}],
    output_format=City,
) as stream:
    final = stream.get_final_message()
check("anthropic stream parse", isinstance(final.parsed_output, City), final)

# json_object: any object.
loose = oa.chat.completions.create(
    model=chat, messages=[{"role": "user", "content": "Give a JSON object with a cat's name and age."}],
    response_format={"type": "json_object"}, temperature=0, max_tokens=400, extra_body=OPENAI_GREEDY,
)
check("openai json_object ends", loose.choices[0].finish_reason == "stop", loose)
check("openai json_object is an object", isinstance(json.loads(loose.choices[0].message.content), dict), loose)


def refused(name, call, says):
    try:
        call()
        check(name, False, "no error")
    except (openai.BadRequestError, anthropic.BadRequestError) as e:
        check(name, e.status_code == 400 and says in str(e), str(e))


deep = {"type": "string"}
for _ in range(64):
    deep = {"type": "array", "items": deep}
huge = {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "x" * 64} for i in range(2000)}}
for label, schema, says in [
    ("too deep", deep, "deeper than"),
    ("too large", huge, "bytes"),
    ("unsupported keyword", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ("remote $ref", {"$ref": "https://example.com/schema.json"}, "nothing is fetched"),
    ("exploding regex", {"type": "string", "pattern": "^((a{40}){40}){40}$"}, "copies"),
]:
    refused(
        f"openai refuses a schema: {label}",
        lambda: oa.chat.completions.create(
            model=chat, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        ),
        says,
    )
    refused(
        f"anthropic refuses a schema: {label}",
        lambda: an.messages.create(
            model=chat, max_tokens=8, messages=[{"role": "user", "content": "hi"}],
            output_config={"format": {"type": "json_schema", "schema": schema}},
        ),
        says,
    )

print(json.dumps({
    "passed": len(checks), "openai": openai.__version__, "anthropic": anthropic.__version__,
    "pydantic": pydantic.VERSION, "checks": checks,
}))
