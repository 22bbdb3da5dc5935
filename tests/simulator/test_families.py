"""The 2026 DashScope model families over real HTTP: classic text2image/image2image models and the messages
protocol (wan2.6), each model's size, count and prompt rules, unreachable inputs and the wrong endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from imaged.simulator import Simulator

from .conftest import (
    I2I,
    MESSAGES,
    T2I,
    Listener,
    dashscope,
    messages_body,
    png_size,
    poll_dashscope,
)

pytestmark = pytest.mark.timeout(30)
URL = "https://example.com/in/fox.png"
DATA_URI = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGAAAAAFAAHhUQ0fAAAAAElFTkSuQmCC"
UNREACHABLE = "https://unreachable.example.com/in/fox.png"


def classic(model: str, prompt: str = "一只小猫", **parameters: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": prompt}, "parameters": parameters}


def i2i(images: Any, **parameters: Any) -> dict[str, Any]:
    return {
        "model": "wan2.5-i2i-preview",
        "input": {"prompt": "换成水彩风格", "images": images},
        "parameters": parameters,
    }


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: dict[str, Any]
    images: int
    size: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)


SUCCEEDS = [
    Case("wan2.2-flash", T2I, classic("wan2.2-t2i-flash", size="1440*512", n=2), 2, (1440, 512)),
    Case("wan2.2-plus-default-size", T2I, classic("wan2.2-t2i-plus", n=1), 1, (1024, 1024)),
    Case("wan2.1-turbo-alias", T2I, classic("wan2.1-t2i-turbo", size="512*1440", n=1), 1, (512, 1440)),
    Case("wan2.1-plus-alias-n-defaults-to-4", T2I, classic("wan2.1-t2i-plus"), 4, (1024, 1024)),
    Case("wanx2.0-turbo", T2I, classic("wanx2.0-t2i-turbo", n=1), 1, (1024, 1024)),
    Case("wan2.5-t2i-default", T2I, classic("wan2.5-t2i-preview", n=1), 1, (1280, 1280)),
    Case("wan2.5-t2i-ratio-4", T2I, classic("wan2.5-t2i-preview", size="2560*640", n=2), 2, (2560, 640)),
    Case("qwen-image-default", T2I, classic("qwen-image"), 1, (1328, 1328)),
    Case("qwen-image-plus", T2I, classic("qwen-image-plus", size="1664*928", n=1), 1, (1664, 928)),
    Case("wan2.5-i2i-default", I2I, i2i([URL, DATA_URI]), 1, (1280, 1280)),
    Case("wan2.5-i2i-sized", I2I, i2i([URL], size="1024*768", n=3), 3, (1024, 768)),
    Case("wan2.6-t2i", MESSAGES, messages_body("wan2.6-t2i", n=2, size="1440*1440"), 2, (1440, 1440)),
    Case("wan2.6-t2i-default", MESSAGES, messages_body("wan2.6-t2i"), 4, (1280, 1280)),
    Case(
        "wan2.6-image-1K",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL,), n=1, size="1K"),
        1,
        (1280, 1280),
    ),
    Case(
        "wan2.6-image-2K",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL, DATA_URI, URL, URL), n=2, size="2K", negative_prompt="模糊"),
        2,
        (2048, 2048),
    ),
    Case(
        "wan2.6-image-WxH",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL,), n=1, size="1600*1024"),
        1,
        (1600, 1024),
    ),
    Case(
        "wan2.6-image-interleave",
        MESSAGES,
        messages_body("wan2.6-image", "x", enable_interleave=True, max_images=2, n=4),
        2,
        (1280, 1280),
        {"interleave": True},
    ),
]


@pytest.mark.parametrize("case", SUCCEEDS, ids=lambda case: case.id)
async def test_each_model_makes_its_images(sim: Simulator, http: aiohttp.ClientSession, case: Case) -> None:
    body = {**case.body, "parameters": {**case.body["parameters"], "is_async": True}}  # unknown keys: ignored
    status, submitted, _ = await dashscope(http, sim, "POST", case.path, body)
    assert status == 200, submitted
    assert submitted["output"]["task_status"] == "PENDING"
    seen, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert seen[-1] == "SUCCEEDED"
    output = final["output"]
    assert final["usage"]["image_count"] == case.images
    width, height = case.size
    if case.path == MESSAGES:
        assert output["finished"] is True and "results" not in output
        assert final["usage"]["size"] == f"{width}*{height}"
        contents = [choice["message"]["content"] for choice in output["choices"]]
        assert all(choice["finish_reason"] == "stop" for choice in output["choices"])
        urls = [part["image"] for content in contents for part in content if part["type"] == "image"]
        texts = [part for content in contents for part in content if part["type"] == "text"]
        assert bool(texts) is bool(case.extra.get("interleave"))
    else:
        assert output["task_metrics"] == {"TOTAL": case.images, "SUCCEEDED": case.images, "FAILED": 0}
        urls = [result["url"] for result in output["results"]]
        if case.path == T2I:
            assert all(result["orig_prompt"] == "一只小猫" for result in output["results"])
    assert len(urls) == case.images
    assert all(url.startswith(f"{sim.url}/_sim/images/") and "Expires=" in url for url in urls)
    assert {await png_size(http, url) for url in urls} == {case.size}
    stats = sim.stats()["providers"]["aliyun"]
    assert (stats["submits"], stats["rejected"], stats["downloads"]) == (1, 0, case.images)


def messages(model: str, content: list[Any], **parameters: Any) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


REFUSED: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("wan2.2-side-too-small", T2I, classic("wan2.2-t2i-flash", size="511*1024"), 400, "InvalidParameter"),
    ("wan2.2-n-5", T2I, classic("wan2.2-t2i-plus", n=5), 400, "InvalidParameter"),
    ("wan2.1-alias-side-too-big", T2I, classic("wan2.1-t2i-plus", size="1441*1024"), 400, "InvalidParameter"),
    ("wan2.5-t2i-below-1280²", T2I, classic("wan2.5-t2i-preview", size="1024*1024"), 400, "InvalidParameter"),
    ("wan2.5-t2i-above-1440²", T2I, classic("wan2.5-t2i-preview", size="1500*1440"), 400, "InvalidParameter"),
    ("wan2.5-t2i-ratio", T2I, classic("wan2.5-t2i-preview", size="2600*640"), 400, "InvalidParameter"),
    ("wan2.5-t2i-n-5", T2I, classic("wan2.5-t2i-preview", n=5), 400, "InvalidParameter"),
    ("qwen-image-free-size", T2I, classic("qwen-image", size="1024*1024"), 400, "InvalidParameter"),
    ("qwen-image-n-2", T2I, classic("qwen-image-plus", n=2), 400, "InvalidParameter"),
    ("wan2.5-i2i-no-images", I2I, i2i(None), 400, "InvalidParameter"),
    ("wan2.5-i2i-4-images", I2I, i2i([URL] * 4), 400, "InvalidParameter"),
    ("wan2.5-i2i-not-a-url", I2I, i2i(["ftp://example.com/a.png"]), 400, "InvalidURL"),
    ("wan2.5-i2i-below-768²", I2I, i2i([URL], size="700*700"), 400, "InvalidParameter"),
    ("wan2.5-i2i-above-1280²", I2I, i2i([URL], size="1440*1440"), 400, "InvalidParameter"),
    ("wan2.5-i2i-ratio", I2I, i2i([URL], size="2000*480"), 400, "InvalidParameter"),
    (
        "wan2.6-t2i-below-1280²",
        MESSAGES,
        messages_body("wan2.6-t2i", size="1024*1024"),
        400,
        "InvalidParameter",
    ),
    ("wan2.6-t2i-n-5", MESSAGES, messages_body("wan2.6-t2i", n=5), 400, "InvalidParameter"),
    ("wan2.6-t2i-with-image", MESSAGES, messages_body("wan2.6-t2i", "x", (URL,)), 400, "InvalidParameter"),
    ("wan2.6-image-no-image", MESSAGES, messages_body("wan2.6-image", n=1), 400, "InvalidParameter"),
    (
        "wan2.6-image-5-images",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL,) * 5),
        400,
        "InvalidParameter",
    ),
    (
        "wan2.6-image-interleave-2-images",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL, URL), enable_interleave=True),
        400,
        "InvalidParameter",
    ),
    (
        "wan2.6-image-max-images-6",
        MESSAGES,
        messages_body("wan2.6-image", enable_interleave=True, max_images=6),
        400,
        "InvalidParameter",
    ),
    (
        "wan2.6-image-tier-3K",
        MESSAGES,
        messages_body("wan2.6-image", "x", (URL,), size="3K"),
        400,
        "InvalidParameter",
    ),
    (
        "wan2.6-negative-501",
        MESSAGES,
        messages_body("wan2.6-t2i", negative_prompt="n" * 501),
        400,
        "InvalidParameter",
    ),
    (
        "two-messages",
        MESSAGES,
        {"model": "wan2.6-t2i", "input": {"messages": [{}, {}]}},
        400,
        "InvalidParameter",
    ),
    (
        "assistant-role",
        MESSAGES,
        {"model": "wan2.6-t2i", "input": {"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}},
        400,
        "InvalidParameter",
    ),
    ("two-texts", MESSAGES, messages("wan2.6-t2i", [{"text": "a"}, {"text": "b"}]), 400, "InvalidParameter"),
    ("no-text", MESSAGES, messages("wan2.6-image", [{"image": URL}]), 400, "InvalidParameter"),
    ("odd-part", MESSAGES, messages("wan2.6-t2i", [{"text": "a"}, "b"]), 400, "InvalidParameter"),
    ("no-input", MESSAGES, {"model": "wan2.6-t2i"}, 400, "BadRequest.EmptyInput"),
    ("unknown-model-messages", MESSAGES, messages_body("wan9-t2i"), 404, "ModelNotFound"),
    # a known model on the wrong endpoint
    ("wan2.6-on-text2image", T2I, classic("wan2.6-t2i"), 400, "InvalidParameter"),
    ("wan2.5-t2i-on-messages", MESSAGES, messages_body("wan2.5-t2i-preview"), 400, "InvalidParameter"),
    ("wan2.5-i2i-on-text2image", T2I, classic("wan2.5-i2i-preview"), 400, "InvalidParameter"),
    ("qwen-on-image2image", I2I, classic("qwen-image"), 400, "InvalidParameter"),
    ("imageedit-on-messages", MESSAGES, messages_body("wanx2.1-imageedit"), 400, "InvalidParameter"),
    # unreachable inputs: never fetched, refused as a failed download
    ("wan2.5-i2i-unreachable", I2I, i2i([URL, UNREACHABLE]), 400, "InternalError.Algo.InvalidParameter"),
    (
        "wan2.6-image-unreachable",
        MESSAGES,
        messages_body("wan2.6-image", "x", (UNREACHABLE,)),
        400,
        "InternalError.Algo.InvalidParameter",
    ),
    (
        "imageedit-unreachable",
        I2I,
        {
            "model": "wanx2.1-imageedit",
            "input": {"function": "expand", "prompt": "x", "base_image_url": UNREACHABLE},
        },
        400,
        "InternalError.Algo.InvalidParameter",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
async def test_each_rule_is_refused_with_the_real_code(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    got_status, got, _ = await dashscope(http, sim, "POST", path, body)
    assert (got_status, got["code"]) == (status, code), got
    assert got["message"] and got["request_id"] and "output" not in got
    if code == "InternalError.Algo.InvalidParameter":
        assert got["message"] == "Failed to download multimodal content"
    stats = sim.stats()["providers"]["aliyun"]
    assert (stats["submits"], stats["rejected"]) == (0, 1)


@pytest.mark.parametrize(
    ("model", "config", "kept"),
    [
        ("wan2.2-t2i-flash", {}, 500),
        ("wanx2.0-t2i-turbo", {}, 800),
        ("qwen-image", {}, 800),
        ("wan2.5-t2i-preview", {}, 2000),
        (
            "wan2.1-t2i-turbo",
            {},
            800,
        ),  # the emulator's pre-2026 limit, kept by default (dashscope_prompt_limits)
        ("wan2.1-t2i-turbo", {"dashscope_prompt_limits": {}}, 500),  # the 2026 table
        ("wanx2.1-t2i-plus", {"dashscope_prompt_limits": {}}, 500),
    ],
)
async def test_long_prompts_are_truncated_per_model(
    sim: Simulator, http: aiohttp.ClientSession, model: str, config: dict[str, Any], kept: int
) -> None:
    sim.config.update(config)
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, classic(model, "猫" * 2500, n=1))
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert final["output"]["results"][0]["orig_prompt"] == "猫" * kept


async def test_wan26_prompt_keeps_2100_characters(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, submitted, _ = await dashscope(
        http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", "猫" * 2500, n=1)
    )
    assert sim.state.tasks[submitted["output"]["task_id"]].prompt == "猫" * 2100


async def test_wan25_lower_bound_is_configurable(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = classic("wan2.5-t2i-preview", size="1024*1024", n=1)
    status, _, _ = await dashscope(http, sim, "POST", T2I, body)
    assert status == 400
    sim.config.update({"dashscope_wan25_min_pixels": 768 * 768})
    status, submitted, _ = await dashscope(http, sim, "POST", T2I, body)
    assert status == 200
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert await png_size(http, final["output"]["results"][0]["url"]) == (1024, 1024)


async def test_unreachable_marker_is_configurable_and_nothing_is_fetched(
    sim: Simulator, http: aiohttp.ClientSession, listener: Listener
) -> None:
    body = i2i([listener.url])
    sim.config.update({"unreachable_inputs": ["127.0.0.1"]})
    status, refused, _ = await dashscope(http, sim, "POST", I2I, body)
    assert (status, refused["code"]) == (400, "InternalError.Algo.InvalidParameter")
    sim.config.update({"unreachable_inputs": []})
    status, submitted, _ = await dashscope(http, sim, "POST", I2I, body)
    assert status == 200
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert final["output"]["task_status"] == "SUCCEEDED"
    assert listener.connections == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (MESSAGES, messages_body("wan2.6-t2i", n=1)),
        (T2I, classic("wan2.5-t2i-preview", n=1)),
        (T2I, classic("qwen-image")),
        (I2I, i2i([URL])),
    ],
    ids=["wan2.6-t2i", "wan2.5-t2i", "qwen-image", "wan2.5-i2i"],
)
async def test_async_header_is_required(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> None:
    status, refused, _ = await dashscope(http, sim, "POST", path, body, async_header=False)
    assert (status, refused["code"]) == (403, "AccessDenied")


async def test_wan22_answers_a_synchronous_call(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = classic("wan2.2-t2i-flash", size="768*512", n=2)
    status, answer, _ = await dashscope(http, sim, "POST", T2I, body, async_header=False)
    assert status == 200
    assert answer["output"]["task_status"] == "SUCCEEDED"
    assert answer["usage"] == {"image_count": 2}
    assert [await png_size(http, r["url"]) for r in answer["output"]["results"]] == [(768, 512)] * 2


async def test_messages_task_runs_pending_running_succeeded(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.config.update({"task_seconds": 1.0})
    _, submitted, _ = await dashscope(http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", n=1))
    task_id = submitted["output"]["task_id"]
    _, pending, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
    assert pending["output"]["task_status"] == "PENDING"
    assert "task_metrics" not in pending["output"] and "choices" not in pending["output"]
    await asyncio.sleep(0.4)
    _, running, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
    assert running["output"]["task_status"] == "RUNNING" and "task_metrics" not in running["output"]
    seen, final = await poll_dashscope(http, sim, task_id)
    assert seen[-1] == "SUCCEEDED"
    assert {"submit_time", "scheduled_time", "end_time"} <= set(final["output"])


async def test_messages_task_cancel_and_failures(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 3})
    _, submitted, _ = await dashscope(http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", n=1))
    task_id = submitted["output"]["task_id"]
    status, _, _ = await dashscope(http, sim, "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert status == 200
    _, canceled, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
    assert canceled["output"]["task_status"] == "CANCELED"

    sim.config.update({"task_seconds": 0.1})
    async with http.post(
        f"{sim.url}/_sim/faults", json={"provider": "aliyun", "stage": "poll", "kind": "fail", "count": 1}
    ):
        pass
    _, submitted, _ = await dashscope(http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", n=2))
    _, failed = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert failed["output"]["task_status"] == "FAILED"
    assert failed["output"]["code"] == "InternalError" and "choices" not in failed["output"]

    async with http.post(
        f"{sim.url}/_sim/faults", json={"provider": "aliyun", "stage": "poll", "kind": "partial", "count": 1}
    ):
        pass
    _, submitted, _ = await dashscope(http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", n=2))
    _, partial = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert partial["output"]["task_status"] == "SUCCEEDED"
    assert len(partial["output"]["choices"]) == 1
    assert partial["usage"]["image_count"] == 1


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"stage": "submit", "kind": "http_500"}, 500, "InternalError"),
        ({"stage": "submit", "kind": "http_429", "retry_after": 2}, 429, "Throttling.RateQuota"),
        ({"stage": "submit", "kind": "moderation"}, 400, "DataInspectionFailed"),
    ],
    ids=["http_500", "http_429", "moderation"],
)
async def test_submit_faults_reach_the_messages_route(
    sim: Simulator, http: aiohttp.ClientSession, fault: dict[str, Any], status: int, code: str
) -> None:
    async with http.post(f"{sim.url}/_sim/faults", json={"provider": "aliyun", "count": 1, **fault}) as resp:
        assert resp.status == 200
    got_status, got, _ = await dashscope(
        http, sim, "POST", MESSAGES, messages_body("wan2.6-image", "x", (URL,))
    )
    assert (got_status, got["code"]) == (status, code)
    assert sim.stats()["providers"]["aliyun"]["faults_injected"] == 1


async def test_limits_count_every_endpoint_together(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"dashscope_concurrency_limit": 2, "task_seconds": 2})
    answers = [
        await dashscope(http, sim, "POST", MESSAGES, messages_body("wan2.6-t2i", n=1)),
        await dashscope(http, sim, "POST", T2I, classic("qwen-image")),
        await dashscope(http, sim, "POST", I2I, i2i([URL])),
    ]
    assert [(status, body.get("code")) for status, body, _ in answers] == [
        (200, None),
        (200, None),
        (429, "Throttling"),
    ]
    stats = sim.stats()["providers"]["aliyun"]
    assert (stats["submits"], stats["concurrency_limit_hits"], stats["in_flight"]) == (2, 1, 2)
