"""Malformed requests for R5: generated from the request JSON Schema, and written by hand."""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imaged.catalog import Catalog
from imaged.contract import Request


@dataclass
class BadMessage:
    body: bytes
    message_id: str | None  # set: the task id is known, so a task.failed event must follow


def _from_schema(schema: dict[str, Any], defs: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random value of a JSON Schema node (the subset pydantic emits for the request model)."""
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, rng, depth)
    if "anyOf" in schema:
        return _from_schema(rng.choice(schema["anyOf"]), defs, rng, depth)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out = {
            k: _from_schema(v, defs, rng, depth + 1)
            for k, v in props.items()
            if k in required or rng.random() < 0.5
        }
        if not props and depth < 3:  # free-form object (parameters, metadata)
            out = {f"k{i}": _scalar(rng) for i in range(rng.randint(0, 4))}
        return out
    if kind == "array":
        return [_scalar(rng) for _ in range(rng.randint(0, 3))]
    if kind == "string":
        if "pattern" in schema:
            return "".join(rng.choice("abcXYZ019_-") for _ in range(rng.randint(1, 64)))
        return "".join(
            rng.choice("abc xyz-.$/\u4e00") for _ in range(rng.randint(schema.get("minLength", 0), 40))
        )
    if kind == "integer":
        return rng.randint(-5, 10**6)
    if kind == "number":
        low = schema.get("exclusiveMinimum", schema.get("minimum", -1e6))
        high = schema.get("maximum", 1e6)
        return rng.uniform(low, high) or high
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _scalar(rng)


def _scalar(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 3.5, "", "x", "\u732b", [], {}])


def schema_generated(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Request bodies drawn from the request JSON Schema; their random models are unknown to the catalog."""
    schema = Request.model_json_schema()
    defs = schema.get("$defs", {})
    known = set(Catalog.load().models)
    bodies = []
    for _ in range(count):
        body = _from_schema(schema, defs, rng)
        if body.get("model") in known:
            body["model"] = f"not-{body['model']}"
        bodies.append(body)
    return bodies


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"n": node}
    return node


HAND_MADE: list[Callable[[random.Random], bytes]] = [
    lambda r: b'{"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": ',  # truncated JSON
    lambda r: r.randbytes(r.randint(1, 2048)),  # binary
    lambda r: b"",
    lambda r: b"null",
    lambda r: b"[1, 2, 3]",
    lambda r: b'"just a string"',
    lambda r: ("[" * 50_000 + "]" * 50_000).encode(),  # deeply nested arrays
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "metadata": _nested(40)}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x" * 300_000}}
    ).encode(),  # huge
    lambda r: json.dumps({"model": 123, "parameters": {"prompt": "x"}}).encode(),
    lambda r: json.dumps({"model": "wanx2.1-t2i-turbo", "parameters": ["prompt"]}).encode(),
    lambda r: json.dumps({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": 5}}).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "timeout_s": "soon"}
    ).encode(),
    lambda r: json.dumps({"model": "dall-e-3", "parameters": {"prompt": "x"}}).encode(),
    lambda r: json.dumps(
        {"model": "star-3-alpha-t2i", "parameters": {"aspectRatio": "square", "imgCount": 1}}
    ).encode(),
    lambda r: json.dumps({"model": "wanx2.1-t2i-turbo", "parameters": {}}).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "metadata": {"a.b": 1}}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "metadata": {"$where": 1}}
    ).encode(),
    lambda r: json.dumps({"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "$set": 1}}).encode(),
    lambda r: json.dumps(
        {
            "model": "liblib-custom",
            "parameters": {"prompt": "x", "baseModelType": "f1", "generateParams": {"$x": 1}},
        }
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "size": "5000*5000"}}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x", "n": r.choice([0, 5, 99])}}
    ).encode(),
    lambda r: json.dumps(
        {"model": "star-3-alpha-t2i", "parameters": {"prompt": "x", "imgCount": 9}}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "provider": "liblibai", "parameters": {"prompt": "x"}}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "task_id": "bad id!"}
    ).encode(),
    lambda r: json.dumps(
        {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "extra_field": True}
    ).encode(),
]


def bad_messages(count: int, seed: int = 11) -> list[BadMessage]:
    """``count`` malformed messages: about a third from the schema, the rest by hand; half carry a message id."""
    rng = random.Random(seed)
    generated = schema_generated(max(1, count // 3), rng)
    messages = [BadMessage(json.dumps(body).encode(), None) for body in generated]
    while len(messages) < count:
        body = rng.choice(HAND_MADE)(rng)
        message_id = f"bad-{secrets.token_hex(8)}" if rng.random() < 0.5 else None
        messages.append(BadMessage(body, message_id))
    rng.shuffle(messages)
    return messages[:count]
