"""Every catalog model end to end through RabbitMQ and the emulator; invalid parameters never reach a provider."""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
import pytest

from imaged.catalog import Catalog
from imaged.daemon import Daemon
from imaged.simulator import Simulator

from ..support import Bus

pytestmark = pytest.mark.timeout(90)

# A valid request per catalog model (and variant).
VALID: list[tuple[str, dict[str, Any]]] = [
    ("wanx2.1-t2i-turbo", {"prompt": "a cat", "size": "512*512"}),
    ("wanx2.1-t2i-plus", {"prompt": "a cat", "size": "768*512", "seed": 7}),
    ("wanx2.0-t2i-turbo", {"prompt": "a cat", "size": "512*768", "n": 2}),
    (
        "wanx2.1-imageedit",
        {
            "function": "stylization_all",
            "prompt": "watercolour",
            "base_image_url": "https://example.com/in.png",
        },
    ),
    ("star-3-alpha-t2i", {"prompt": "a cat", "aspectRatio": "landscape", "imgCount": 1}),
    ("star-3-alpha-t2i", {"prompt": "a cat", "imageSize": {"width": 640, "height": 512}, "imgCount": 2}),
    (
        "star-3-alpha-i2i",
        {"prompt": "a cat", "sourceImage": "https://example.com/src.jpg", "width": 512, "height": 640},
    ),
    (
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "a cat", "generateParams": {"width": 512, "height": 512}},
    ),
    (
        "liblib-custom",
        {
            "baseModelType": "sd",
            "checkPointId": "0ea388c7eb854be3ba3c6f65aac6bfd3",
            "prompt": "a cat",
            "generateParams": {"width": 384, "height": 512, "steps": 20},
        },
    ),
    (
        "liblib-custom",
        {
            "baseModelType": "f1",
            "prompt": "a cat",
            "sourceImage": "https://example.com/src.jpg",
            "generateParams": {"width": 512, "height": 512},
        },
    ),
]

# An invalid request per model, and the field its error message must name.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("wanx2.1-t2i-turbo", {"prompt": "a cat", "size": "2000*1024"}, "size"),
    ("wanx2.1-t2i-plus", {"prompt": "a cat", "n": 9}, "n"),
    ("wanx2.0-t2i-turbo", {"size": "512*512"}, "prompt"),
    ("wanx2.1-imageedit", {"prompt": "x", "base_image_url": "https://example.com/in.png"}, "function"),
    ("star-3-alpha-t2i", {"prompt": "a cat", "imgCount": 9}, "imgCount"),
    ("star-3-alpha-i2i", {"prompt": "a cat", "width": 512, "height": 512}, "sourceImage"),
    ("liblib-custom", {"baseModelType": "f1", "prompt": "x", "generateParams": {"steps": 100}}, "steps"),
    ("wanx2.1-t2i-turbo", {"prompt": "a cat", "style": "<anime>"}, "style"),
]


def test_tables_cover_the_whole_catalog() -> None:
    models = set(Catalog.load().models)
    assert {m for m, _ in VALID} == models
    assert {m for m, _, _ in INVALID} == models


async def test_every_catalog_model_completes(daemon: Daemon, bus: Bus) -> None:
    ids = {}
    for model, parameters in VALID:
        task_id = secrets.token_hex(12)
        ids[task_id] = (model, parameters)
        await bus.publish(json.dumps({"model": model, "parameters": parameters}).encode(), message_id=task_id)
    terminal = await bus.wait_terminal(ids, within=60)
    for task_id, (model, parameters) in ids.items():
        event = terminal[task_id]
        assert event["status"] == "completed", (model, event.get("error"))
        result = event["result"]
        expected = parameters.get("n") or parameters.get("imgCount") or 1
        assert len(result["images"]) == expected, (model, result)
        assert result["model"] == model and result["cost"] is not None


async def test_invalid_parameters_fail_before_any_provider_call(
    daemon: Daemon, bus: Bus, simulator: Simulator
) -> None:
    ids = {}
    for model, parameters, field in INVALID:
        task_id = secrets.token_hex(12)
        ids[task_id] = (model, field)
        await bus.publish(json.dumps({"model": model, "parameters": parameters}).encode(), message_id=task_id)
    terminal = await bus.wait_terminal(ids, within=30)
    for task_id, (model, field) in ids.items():
        event = terminal[task_id]
        assert event["status"] == "failed" and event["type"] == "task.failed"
        assert event["error"]["category"] == "invalid_request", event["error"]
        assert field in event["error"]["message"], (model, event["error"]["message"])
    async with aiohttp.ClientSession() as http, http.get(f"{simulator.url}/_sim/stats") as resp:
        stats = await resp.json()
    for provider in ("aliyun", "liblibai"):
        counters = stats["providers"][provider]
        assert (counters["submits"], counters["rejected"], counters["polls"]) == (0, 0, 0), counters
