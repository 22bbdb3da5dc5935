"""The official `dashscope` SDK against the emulator, for the 2026 families: `ImageGeneration` (messages protocol,
wan2.6) and `ImageSynthesis` (classic, wan2.5 and the synchronous wan2.2 call).

The SDK builds `{base_http_api_url}/services/aigc/image-generation/generation` for `ImageGeneration.async_call`
(2.0.2 sends `"is_async": true` among the parameters) and `…/text2image|image2image/image-synthesis` for
`ImageSynthesis`; it is blocking, so each call runs in a worker thread. 2.0.2 does not export `ImageGeneration`
at the package top, hence the module import.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from typing import Any

import dashscope
import pytest
from dashscope import ImageSynthesis
from dashscope.aigc.image_generation import ImageGeneration
from dashscope.api_entities.dashscope_response import ImageGenerationResponse, Message
from PIL import Image

from imaged.simulator import Simulator

from .conftest import API_KEY

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def sdk_base_url(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", sim.dashscope_base_url)


def fetch_size(url: str) -> tuple[int, int]:
    """The size of a result image, downloaded the way an SDK user would (blocking, in the worker thread)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        data = response.read()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_image_generation_wan26_t2i_async_call_and_wait(sim: Simulator) -> None:
    def run() -> tuple[Any, Any, list[tuple[int, int]]]:
        task = ImageGeneration.async_call(
            model="wan2.6-t2i",
            api_key=API_KEY,
            messages=[Message(role="user", content=[{"text": "一只在草地上奔跑的小狐狸"}])],
            n=2,
            size="1280*1280",
            negative_prompt="模糊",
        )
        assert isinstance(task, ImageGenerationResponse)  # not a stream
        result = ImageGeneration.wait(task, api_key=API_KEY, wait_timeout=30)
        urls = [part["image"] for choice in result.output.choices for part in choice.message.content]
        return task, result, [fetch_size(url) for url in urls]

    task, result, sizes = await asyncio.to_thread(run)
    assert task.status_code == 200 and task.output.task_status == "PENDING"
    assert result.status_code == 200
    assert result.output.task_status == "SUCCEEDED"
    assert len(result.output.choices) == 2
    assert result.output.choices[0].message.role == "assistant"
    assert result.usage["image_count"] == 2 and result.usage["size"] == "1280*1280"
    assert sizes == [(1280, 1280)] * 2
    emulated = sim.state.tasks[task.output.task_id]
    assert (emulated.kind, emulated.model) == ("image-generation", "wan2.6-t2i")


async def test_image_synthesis_wan25_t2i_async_call_and_wait(sim: Simulator) -> None:
    def run() -> tuple[Any, list[tuple[int, int]]]:
        task = ImageSynthesis.async_call(
            model="wan2.5-t2i-preview", prompt="一只小猫", n=1, size="1440*1140", api_key=API_KEY
        )
        assert task.status_code == 200, task
        result = ImageSynthesis.wait(task, api_key=API_KEY)
        return result, [fetch_size(r.url) for r in result.output.results]

    result, sizes = await asyncio.to_thread(run)
    assert result.status_code == 200
    assert result.output.task_status == "SUCCEEDED"
    assert result.usage.image_count == 1
    assert sizes == [(1440, 1140)]


async def test_image_synthesis_wan25_i2i_and_wan22_sync_call(sim: Simulator) -> None:
    def run() -> tuple[Any, Any, Any]:
        edit = ImageSynthesis.async_call(
            model="wan2.5-i2i-preview",
            prompt="换成水彩风格",
            images=["https://example.com/in/fox.png"],
            api_key=API_KEY,
        )
        edited = ImageSynthesis.wait(edit, api_key=API_KEY)
        synchronous = ImageSynthesis.sync_call(
            model="wan2.2-t2i-flash", prompt="一只小猫", n=1, size="1024*768", api_key=API_KEY
        )
        refused = ImageGeneration.async_call(
            model="wan2.6-image",
            api_key=API_KEY,
            messages=[Message(role="user", content=[{"text": "x"}])],  # edit mode needs 1..4 input images
        )
        return edited, synchronous, refused

    edited, synchronous, refused = await asyncio.to_thread(run)
    assert edited.output.task_status == "SUCCEEDED" and edited.usage.image_count == 1
    assert "_1280x1280_" in edited.output.results[0].url
    assert synchronous.status_code == 200 and synchronous.output.task_status == "SUCCEEDED"
    assert "_1024x768_" in synchronous.output.results[0].url
    assert (refused.status_code, refused.code) == (400, "InvalidParameter")
    kinds = sorted(task.kind for task in sim.state.tasks.values())
    assert kinds == ["image2image", "text2image"]
