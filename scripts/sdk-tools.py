"""Function calling through the official SDKs: for `tool_choice` required (Anthropic: any)
and a named function, streamed and not, the model calls, the caller runs the function and
sends its result back, and the model answers in text. Every call's arguments are checked
against the function's schema. Exits non-zero with the failing check.

    sdk-tools.py BASE_URL KEY CHAT_ALIAS

Prints {"passed": N, "openai": V, "anthropic": V, "checks": [...]}.
"""

import json
import sys

import anthropic
import openai

base, key, chat = sys.argv[1:4]
checks = []


def check(name, ok, detail=""):
    checks.append(name)
    if not ok:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
FUNCTIONS = {"get_weather": WEATHER, "get_time": TIME}


def valid(name, arguments):
    """The arguments match the function's schema (the subset these schemas use)."""
    schema = FUNCTIONS.get(name)
    if schema is None or not isinstance(arguments, dict):
        return False
    if set(arguments) != set(schema["required"]):
        return False
    for field, rule in schema["properties"].items():
        value = arguments[field]
        if "enum" in rule and value not in rule["enum"]:
            return False
        if rule.get("type") == "string" and not isinstance(value, str):
            return False
        if rule.get("type") == "integer" and not (
            isinstance(value, int) and rule["minimum"] <= value <= rule["maximum"]
        ):
            return False
    return True


def result_of(name, arguments):
    if name == "get_weather":
        return json.dumps({"city": arguments["city"], "temperature": 18, "conditions": "sunny"})
    return json.dumps({"time": "14:05"})


QUESTION = "What is the weather in Paris for the next two days?"
# A 135M-parameter model decoding greedily tends to repeat a call until the limit; a mild
# repetition penalty lets it close the list.
PENALTY = {"repetition_penalty": 1.3}
# Room for the most calls one answer may make (8), so a model that keeps calling still ends
# its answer where the grammar closes the list.
CALL_TOKENS = 640
oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
openai_tools = [
    {"type": "function", "function": {"name": n, "description": d, "parameters": FUNCTIONS[n]}}
    for n, d in [("get_weather", "The weather forecast for a city"), ("get_time", "The time in a timezone")]
]
# The named choice also asks for one call only; the required one allows several.
for label, choice, parallel in [
    ("required", "required", True),
    ("named", {"type": "function", "function": {"name": "get_weather"}}, False),
]:
    for stream in (False, True):
        name = f"openai {label}{' streamed' if stream else ''}"
        messages = [{"role": "user", "content": QUESTION}]
        request = dict(model=chat, messages=messages, tools=openai_tools, tool_choice=choice, temperature=0, max_tokens=CALL_TOKENS,
                       parallel_tool_calls=parallel, extra_body=PENALTY)
        if stream:
            calls, finish = {}, None
            for chunk in oa.chat.completions.create(stream=True, **request):
                for c in chunk.choices:
                    finish = c.finish_reason or finish
                    for delta in c.delta.tool_calls or []:
                        entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                        entry["id"] = delta.id or entry["id"]
                        if delta.function:
                            entry["name"] = delta.function.name or entry["name"]
                            entry["arguments"] += delta.function.arguments or ""
            calls = [calls[i] for i in sorted(calls)]
            assistant = {"role": "assistant", "content": None, "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]}
        else:
            reply = oa.chat.completions.create(**request)
            finish = reply.choices[0].finish_reason
            calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                     for c in reply.choices[0].message.tool_calls or []]
            assistant = reply.choices[0].message  # appended as the SDK returned it
        check(f"{name}: finish_reason tool_calls", finish == "tool_calls", (finish, None if stream else reply.choices[0].message.content))
        check(f"{name}: at least one call", len(calls) >= 1, calls)
        if not parallel:
            check(f"{name}: one call when parallel calls are off", len(calls) == 1, calls)
        for call in calls:
            arguments = json.loads(call["arguments"])
            check(f"{name}: arguments match the schema", valid(call["name"], arguments), call)
            if label == "named":
                check(f"{name}: the named function", call["name"] == "get_weather", call)
        messages.append(assistant)
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": result_of(call["name"], json.loads(call["arguments"]))})
        final = oa.chat.completions.create(model=chat, messages=messages, tools=openai_tools, tool_choice="none",
                                           temperature=0, max_tokens=64)
        text = final.choices[0].message.content
        check(f"{name}: a final answer in text", bool(text) and not final.choices[0].message.tool_calls, final)

an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
anthropic_tools = [
    {"name": n, "description": d, "input_schema": FUNCTIONS[n]}
    for n, d in [("get_weather", "The weather forecast for a city"), ("get_time", "The time in a timezone")]
]
GREEDY = {"temperature": 0, **PENALTY}
for label, choice in [
    ("any", {"type": "any"}),
    ("named", {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
]:
    for stream in (False, True):
        name = f"anthropic {label}{' streamed' if stream else ''}"
        messages = [{"role": "user", "content": QUESTION}]
        request = dict(model=chat, max_tokens=CALL_TOKENS, messages=messages, tools=anthropic_tools, tool_choice=choice,
                       extra_body=GREEDY)
        if stream:
            with an.messages.stream(**request) as s:
                message = s.get_final_message()
        else:
            message = an.messages.create(**request)
        uses = [b for b in message.content if b.type == "tool_use"]
        check(f"{name}: stop_reason tool_use", message.stop_reason == "tool_use", message)
        check(f"{name}: at least one tool_use", len(uses) >= 1, message.content)
        for use in uses:
            check(f"{name}: input matches the schema", valid(use.name, use.input), use)
            if label == "named":
                check(f"{name}: the named tool", use.name == "get_weather", use)
        if label == "named":
            check(f"{name}: one call when parallel use is off", len(uses) == 1, uses)
        messages.append({"role": "assistant", "content": message.content})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": result_of(u.name, u.input)} for u in uses]})
        final = an.messages.create(model=chat, max_tokens=64, messages=messages, tools=anthropic_tools,
                                   tool_choice={"type": "none"}, extra_body=GREEDY)
        check(f"{name}: a final answer in text",
              final.stop_reason in ("end_turn", "max_tokens") and final.content[0].type == "text" and final.content[0].text,
              final)

# A function whose parameters are a pydantic model holding another, as agent frameworks write
# them: the inner model is a "$defs" entry the parameters refer to. A named call must match.
from pydantic import BaseModel, ValidationError  # noqa: E402


class Address(BaseModel):
    street: str
    city: str


class Shipment(BaseModel):
    to: Address
    parcels: int


def validates(model, raw):
    try:
        model.model_validate_json(raw) if isinstance(raw, str) else model.model_validate(raw)
        return True
    except ValidationError:
        return False


SHIP_QUESTION = [{"role": "user", "content": "Ship two parcels to 5 Rue Cler in Paris."}]
ship = openai.pydantic_function_tool(Shipment, name="ship", description="Ship parcels to an address")
check("a pydantic function refers to its inner model", "$defs" in json.dumps(ship["function"]["parameters"]), ship)
reply = oa.chat.completions.create(model=chat, messages=SHIP_QUESTION, tools=[ship], temperature=0,
                                   tool_choice={"type": "function", "function": {"name": "ship"}},
                                   max_tokens=CALL_TOKENS, extra_body=PENALTY)
call = (reply.choices[0].message.tool_calls or [None])[0]
check("openai pydantic function: the call validates", call is not None and validates(Shipment, call.function.arguments),
      reply.choices[0].message)
message = an.messages.create(model=chat, max_tokens=CALL_TOKENS, messages=SHIP_QUESTION, extra_body=GREEDY,
                             tools=[{"name": "ship", "input_schema": Shipment.model_json_schema()}],
                             tool_choice={"type": "tool", "name": "ship"})
uses = [b for b in message.content if b.type == "tool_use"]
check("anthropic pydantic tool: the call validates", len(uses) >= 1 and all(validates(Shipment, u.input) for u in uses),
      message.content)

print(json.dumps({"passed": len(checks), "openai": openai.__version__, "anthropic": anthropic.__version__,
                  "checks": checks}))
