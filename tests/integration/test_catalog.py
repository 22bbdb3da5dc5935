"""Every catalog model end to end through RabbitMQ and the emulator, with the right file count, sizes and cost;
invalid parameters for each fail as `invalid_request` without a single provider call; and a model of a known
family added by a catalog edit alone runs too."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from imaged.catalog import SHIPPED_CATALOG, Catalog
from imaged.daemon import Daemon
from imaged.simulator import Simulator

from ..conftest import make_daemon, make_settings
from ..support import Bus

pytestmark = pytest.mark.timeout(120)

SOURCE = "https://example.com/in.png"
COMFY_WORKFLOW = "2f22c5a6e3a44b1b8d7a4b4a5e4a6d0e"  # the emulator's demo workflow


@dataclass(frozen=True)
class Case:
    model: str
    parameters: dict[str, Any]
    images: int = 1
    size: tuple[int, int] | None = None
    """Every delivered file has this size (None: not checked, e.g. an edit keeps its input's)."""
    cost: float | None = None


# A valid request per catalog model (and variant): written from providers.md, independently of the catalog.
VALID: list[Case] = [
    Case("wanx2.1-t2i-turbo", {"prompt": "a cat", "size": "512*512"}, size=(512, 512), cost=0.14),
    Case("wanx2.1-t2i-plus", {"prompt": "a cat", "size": "768*512", "seed": 7}, size=(768, 512), cost=0.2),
    Case("wanx2.0-t2i-turbo", {"prompt": "a cat", "size": "512*768", "n": 2}, 2, (512, 768), 0.08),
    Case("wan2.2-t2i-flash", {"prompt": "a cat"}, size=(1024, 1024), cost=0.14),
    Case("wan2.2-t2i-plus", {"prompt": "a cat", "size": "1440*512", "n": 2}, 2, (1440, 512), 0.4),
    Case("wan2.5-t2i-preview", {"prompt": "a cat", "size": "1440*1152"}, size=(1440, 1152), cost=0.2),
    Case("qwen-image", {"prompt": "a sign that says imaged"}, size=(1328, 1328), cost=0.25),
    Case("qwen-image-plus", {"prompt": "a cat", "size": "1664*928"}, size=(1664, 928), cost=0.2),
    Case(
        "wan2.5-i2i-preview",
        {"prompt": "make it blue", "images": [SOURCE, "https://example.com/b.jpg"], "size": "1024*1024"},
        size=(1024, 1024),
        cost=0.2,
    ),
    Case(
        "wanx2.1-imageedit",
        {"function": "stylization_all", "prompt": "watercolour", "base_image_url": SOURCE},
        cost=0.14,
    ),
    Case("wan2.6-t2i", {"prompt": "a cat", "size": "1280*1280", "n": 2}, 2, (1280, 1280), 0.4),
    Case("wan2.6-image", {"prompt": "a cat", "images": [SOURCE], "size": "2K"}, size=(2048, 2048), cost=0.3),
    Case("star-3-alpha-t2i", {"prompt": "a cat", "aspectRatio": "landscape"}, size=(1280, 720), cost=0.1),
    Case(
        "star-3-alpha-t2i",
        {"prompt": "a cat", "imageSize": {"width": 640, "height": 512}, "imgCount": 2},
        2,
        (640, 512),
        0.2,
    ),
    Case(
        "star-3-alpha-i2i",
        {"prompt": "a cat", "sourceImage": SOURCE, "width": 512, "height": 640},
        1,
        (512, 640),
        0.1,
    ),
    Case(
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "a cat", "generateParams": {"width": 512, "height": 512}},
        size=(512, 512),
        cost=0.08,
    ),
    Case(
        "liblib-custom",
        {
            "baseModelType": "sd",
            "checkPointId": "0ea388c7eb854be3ba3c6f65aac6bfd3",
            "prompt": "a cat",
            "generateParams": {"width": 384, "height": 512, "steps": 20},
        },
        size=(384, 512),
        cost=0.06,
    ),
    Case(
        "liblib-custom",
        {
            "baseModelType": "f1",
            "prompt": "a cat",
            "sourceImage": SOURCE,
            "generateParams": {"width": 512, "height": 512},
        },
        size=(512, 512),
        cost=0.08,
    ),
    Case(
        "liblib-qwen-image",
        {"prompt": "a cat", "width": 1024, "height": 768, "imgCount": 2},
        2,
        (1024, 768),
        0.12,
    ),
    Case("f1-kontext-pro", {"prompt": "a cat", "aspectRatio": "16:9"}, size=(1392, 752), cost=0.29),
    Case(
        "f1-kontext-max",
        {"prompt": "same cat, at night", "image_list": [SOURCE, SOURCE]},
        size=(1024, 1024),
        cost=0.58,
    ),
    Case(
        "seedream-4.0",
        {"prompt": "a comic strip", "width": 1024, "height": 1024, "imgCount": 3},
        3,
        (1024, 1024),
        0.6,
    ),
    Case("seedream-4.5", {"prompt": "a cat", "width": 1920, "height": 1920}, size=(1920, 1920), cost=0.2),
    Case(
        "liblib-comfyui",
        {
            "workflowUuid": COMFY_WORKFLOW,
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 2}},
        },
        2,
        (768, 512),
        0.24,
    ),
]

# An invalid request per model, and a word its error message must contain (the field, named).
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("wanx2.1-t2i-turbo", {"prompt": "a cat", "size": "2000*1024"}, "parameters.size"),
    ("wanx2.1-t2i-plus", {"prompt": "a cat", "n": 9}, "parameters.n"),
    ("wanx2.0-t2i-turbo", {"size": "512*512"}, "parameters.prompt"),
    ("wan2.2-t2i-flash", {"prompt": "a cat", "size": "1441*512"}, "parameters.size"),
    ("wan2.2-t2i-plus", {"prompt": "x" * 501}, "parameters.prompt"),
    ("wan2.5-t2i-preview", {"prompt": "a cat", "size": "1024*1024"}, "parameters.size"),
    ("qwen-image", {"prompt": "a cat", "n": 2}, "parameters.n"),
    ("qwen-image-plus", {"prompt": "a cat", "size": "1024*1024"}, "parameters.size"),
    ("wan2.5-i2i-preview", {"prompt": "a cat"}, "parameters.images"),
    ("wanx2.1-imageedit", {"prompt": "x", "base_image_url": SOURCE}, "parameters.function"),
    ("wan2.6-t2i", {"prompt": "x" * 2101}, "parameters.prompt"),
    ("wan2.6-image", {"prompt": "a cat", "images": [SOURCE] * 5}, "parameters.images"),
    ("star-3-alpha-t2i", {"prompt": "a cat", "imgCount": 9}, "parameters.imgCount"),
    ("star-3-alpha-i2i", {"prompt": "a cat", "width": 512, "height": 512}, "parameters.sourceImage"),
    ("liblib-custom", {"baseModelType": "f1", "prompt": "x", "generateParams": {"steps": 100}}, "steps"),
    ("liblib-qwen-image", {"prompt": "a cat", "width": 4096, "height": 1024}, "parameters.width"),
    ("f1-kontext-pro", {"prompt": "a cat", "image_list": [SOURCE, SOURCE]}, "parameters.image_list"),
    ("f1-kontext-max", {"prompt": "a cat", "aspectRatio": "5:4"}, "parameters.aspectRatio"),
    ("seedream-4.0", {"prompt": "a cat", "imgCount": 16}, "parameters.imgCount"),
    ("seedream-4.5", {"prompt": "a cat", "width": 1024, "height": 1024}, "width × height"),
    ("liblib-comfyui", {"workflowUuid": COMFY_WORKFLOW}, "node"),
    ("wanx2.1-t2i-turbo", {"prompt": "a cat", "style": "<anime>"}, "parameters.style"),
]


def test_tables_cover_the_whole_catalog() -> None:
    models = set(Catalog.load().models)
    assert {case.model for case in VALID} == models
    assert {model for model, _, _ in INVALID} == models


def image_sizes(paths: list[str]) -> list[tuple[int, int]]:
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


async def test_every_catalog_model_completes(daemon: Daemon, bus: Bus) -> None:
    ids = {}
    for case in VALID:
        task_id = secrets.token_hex(12)
        ids[task_id] = case
        await bus.publish(
            json.dumps({"model": case.model, "parameters": case.parameters}).encode(), message_id=task_id
        )
    terminal = await bus.wait_terminal(ids, within=100)
    for task_id, case in ids.items():
        event = terminal[task_id]
        assert event["status"] == "completed", (case.model, event.get("error"))
        result = event["result"]
        files = [image["local_path"] for image in result["images"]]
        assert len(files) == case.images, (case.model, result)
        sizes = image_sizes(files)  # the files are there, and are images
        assert result["model"] == case.model
        if case.size is not None:
            assert sizes == [case.size] * case.images, case.model
            assert [(i["width"], i["height"]) for i in result["images"]] == [case.size] * case.images
        if case.cost is not None:
            assert result["cost"] == pytest.approx(case.cost), (
                case.model,
                result["cost"],
                result.get("usage"),
            )


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
        assert event["error"]["category"] == "invalid_request", (model, event["error"])
        assert field in event["error"]["message"], (model, event["error"]["message"])
    async with aiohttp.ClientSession() as http, http.get(f"{simulator.url}/_sim/stats") as resp:
        stats = await resp.json()
    for provider in ("aliyun", "liblibai"):
        counters = stats["providers"][provider]
        assert (counters["submits"], counters["rejected"], counters["polls"]) == (0, 0, 0), counters


# wanx-v1 is served by DashScope (and the emulator) but not in the shipped catalog: adding it is an edit.
NEW_MODEL = """
[models."wanx-v1"]
provider = "aliyun"
family = "classic"
kind = "text-to-image"
title = "Tongyi Wanxiang v1"
endpoint = "/services/aigc/text2image/image-synthesis"
defaults = { n = 1, size = "1024*1024" }
accepts = { prompt = 500, negative_prompt = 500, n = [1, 4], size = { choices = ["1024*1024", "720*1280", "1280*720"] } }
price = { per_image = 0.16 }
"""


@pytest.fixture
async def edited_daemon(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus
) -> AsyncIterator[Daemon]:
    catalog = tmp_path / "models.toml"
    catalog.write_text(SHIPPED_CATALOG.read_text(encoding="utf-8") + NEW_MODEL, encoding="utf-8")
    daemon = make_daemon(
        make_settings(namespace, tmp_path / "images", simulator, catalog_path=catalog), simulator
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


async def test_a_model_of_a_known_family_is_a_catalog_edit(edited_daemon: Daemon, bus: Bus) -> None:
    good, bad = secrets.token_hex(12), secrets.token_hex(12)
    await bus.publish(
        json.dumps(
            {"model": "wanx-v1", "parameters": {"prompt": "a cat", "size": "720*1280", "n": 2}}
        ).encode(),
        message_id=good,
    )
    await bus.publish(
        json.dumps({"model": "wanx-v1", "parameters": {"prompt": "a cat", "size": "800*800"}}).encode(),
        message_id=bad,
    )
    events = await bus.wait_terminal([good, bad], within=60)
    result = events[good]["result"]
    assert events[good]["status"] == "completed", events[good].get("error")
    assert image_sizes([i["local_path"] for i in result["images"]]) == [(720, 1280)] * 2
    assert result["cost"] == pytest.approx(0.32)
    assert events[bad]["error"]["category"] == "invalid_request"
    assert "parameters.size: must be one of 1024*1024, 720*1280, 1280*720" in events[bad]["error"]["message"]
