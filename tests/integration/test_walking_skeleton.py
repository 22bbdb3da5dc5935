"""The core path on real services: the original README's requests become images, stored tasks and events."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from imaged.contract import Event, Result
from imaged.daemon import Daemon

from ..support import IMAGE_NAME_RE, SEED_MODELS, SEED_SIZES, Bus, seed_body

pytestmark = pytest.mark.timeout(90)


def inspect_image(path: Path) -> tuple[str | None, tuple[int, int], int]:
    """Format, pixel size and byte size of an image file on disk."""
    with Image.open(path) as img:
        return img.format, img.size, path.stat().st_size


async def test_original_requests_end_to_end(daemon: Daemon, bus: Bus) -> None:
    task_ids = {model: secrets.token_hex(12) for model in SEED_MODELS}
    for model, task_id in task_ids.items():
        await bus.publish(seed_body(model), message_id=task_id)

    terminal = await bus.wait_terminal(task_ids.values(), within=60)
    await asyncio.sleep(0.5)  # let any duplicate terminal event arrive before counting

    async with aiohttp.ClientSession() as http:
        for model, task_id in task_ids.items():
            event = terminal[task_id]
            assert event["type"] == "task.completed", event.get("error")
            assert [e["type"] for e in bus.terminal(task_id)] == ["task.completed"]
            types = [e["type"] for e in bus.events[task_id]]
            assert types[0] == "task.pending" and "task.processing" in types
            parsed = Event.model_validate(event)
            assert parsed.model == model and parsed.progress == 1.0
            result = Result.model_validate(event["result"])
            assert result.model == model and result.id
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", result.created)
            width, height = SEED_SIZES[model]
            assert (result.width, result.height) == (width, height)
            assert len(result.images) == 1
            image = result.images[0]
            assert image.local_path is not None and image.storage_url == Path(image.local_path).as_uri()
            assert image.download_url is None  # local files have no download link
            path = Path(image.local_path)
            assert path.is_absolute()
            assert re.fullmatch(IMAGE_NAME_RE, path.name), path.name
            assert path.parent == daemon.settings.image_dir.resolve()
            assert inspect_image(path) == ("PNG", (width, height), image.bytes)
            assert (image.width, image.height) == (width, height)
            if parsed.provider == "liblibai":
                assert result.pointsCost is not None and result.accountBalance is not None
                assert image.auditStatus == 3

            stored = await daemon.store.get(task_id)
            assert stored is not None and stored.status == "completed"
            assert stored.provider_task_id == result.id
            assert stored.terminal_event is not None
            assert stored.terminal_event["event_id"] == event["event_id"]

            async with http.get(f"{daemon.http_url}/api/v1/tasks/{task_id}/status") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["success"] is True and body["message"]
            assert body["results"]["task_id"] == task_id and body["results"]["status"] == "completed"
            async with http.get(f"{daemon.http_url}/api/v1/tasks/{task_id}/result") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["success"] is True
            assert set(body["results"]) == {"task_id", "status", "result", "error"}
            assert body["results"]["error"] is None
            assert body["results"]["result"]["images"][0]["local_path"] == image.local_path


async def test_unknown_task_answers_404_envelope(daemon: Daemon) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{daemon.http_url}/api/v1/tasks/nope/status") as resp,
    ):
        assert resp.status == 404
        body = await resp.json()
    assert body["success"] is False and "nope" in body["message"] and body["results"] is None


async def test_health_and_metrics(daemon: Daemon, bus: Bus) -> None:
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
    await bus.wait_terminal([task_id], within=30)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.http_url}/health/live") as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.http_url}/health/ready") as resp:
            ready = await resp.json()
            assert resp.status == 200 and ready["ready"] is True
        async with http.get(f"{daemon.http_url}/metrics") as resp:
            text = await resp.text()
    assert 'imaged_tasks_total{model="star-3-alpha-t2i",provider="liblibai",status="completed"} 1.0' in text
    assert "imaged_task_duration_seconds_bucket" in text
    assert "imaged_tasks_in_flight" in text
    assert "imaged_provider_slots_in_use" in text


async def test_redelivered_request_makes_one_task(daemon: Daemon, bus: Bus) -> None:
    task_id = secrets.token_hex(12)
    for _ in range(3):
        await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=task_id)
    await bus.wait_terminal([task_id], within=30)
    await asyncio.sleep(1.0)
    ids = {e["event_id"] for e in bus.terminal(task_id)}
    assert len(ids) == 1, bus.terminal(task_id)
    assert await daemon.store.count() == 1
