"""Faults injected at run time through `/_sim/faults`, one test per kind and stage."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from imaged.simulator import Simulator, SimulatorConfig

from .conftest import (
    STAR3_T2I,
    T2I,
    dashscope,
    liblib,
    poll_dashscope,
    poll_liblib,
    sim_post,
    star3_body,
    t2i_body,
)

pytestmark = pytest.mark.timeout(30)
STATUS = "/api/generate/webui/status"


async def add_fault(http: aiohttp.ClientSession, sim: Simulator, **spec: Any) -> dict[str, Any]:
    answer = await sim_post(http, sim, "/_sim/faults", spec)
    fault: dict[str, Any] = answer["faults"][0]
    return fault


async def liblib_image_url(http: aiohttp.ClientSession, sim: Simulator) -> str:
    _, submitted = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
    url: str = final["data"]["images"][0]["imageUrl"]
    return url


async def test_fault_routes_list_add_and_clear(sim: Simulator, http: aiohttp.ClientSession) -> None:
    added = await sim_post(
        http,
        sim,
        "/_sim/faults",
        [
            {"provider": "aliyun", "stage": "poll", "kind": "http_500", "rate": 0.5},
            {"provider": "liblibai", "stage": "submit", "kind": "http_429", "count": 2, "retry_after": 3},
        ],
    )
    ids = [f["id"] for f in added["faults"]]
    async with http.get(f"{sim.url}/_sim/faults") as resp:
        listed = (await resp.json())["faults"]
    assert [f["id"] for f in listed] == ids
    assert listed[1] | {} == listed[1] and listed[1]["remaining"] == 2 and listed[1]["hits"] == 0
    async with http.delete(f"{sim.url}/_sim/faults/{ids[0]}") as resp:
        assert resp.status == 200
    async with http.delete(f"{sim.url}/_sim/faults/{ids[0]}") as resp:
        assert resp.status == 404
    async with http.delete(f"{sim.url}/_sim/faults") as resp:
        assert (await resp.json()) == {"cleared": 1}
    async with http.get(f"{sim.url}/_sim/faults") as resp:
        assert (await resp.json())["faults"] == []


@pytest.mark.parametrize(
    "spec",
    [
        {"stage": "submit", "kind": "partial"},
        {"stage": "download", "kind": "fail"},
        {"stage": "cancel", "kind": "moderation"},
        {"stage": "poll", "kind": "truncated"},
        {"stage": "poll", "kind": "http_500", "rate": 0.5, "count": 1},
        {"stage": "poll", "kind": "http_500", "rate": 1.5},
        {"stage": "poll", "kind": "http_500", "count": 0},
        {"stage": "poll", "kind": "explode"},
        {"stage": "poll", "kind": "http_500", "colour": "red"},
        {"stage": "poll", "kind": "fail", "phase": "after"},
        {"provider": "midjourney", "stage": "poll", "kind": "fail"},
        {"stage": "poll", "kind": "fail", "variant": "audit"},
        {"stage": "poll", "kind": "partial", "variant": "code"},
    ],
)
async def test_invalid_fault_specs_are_400(
    sim: Simulator, http: aiohttp.ClientSession, spec: dict[str, Any]
) -> None:
    async with http.post(f"{sim.url}/_sim/faults", json=spec) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]
    assert sim.stats()["faults"] == []


async def test_http_429_with_retry_after_then_normal(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="submit", kind="http_429", count=1, retry_after=3)
    status, body, headers = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    assert (status, body["code"], headers["Retry-After"]) == (429, "Throttling.RateQuota", "3")
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    assert status == 200
    stats = sim.stats()
    assert stats["providers"]["aliyun"]["faults_injected"] == 1
    assert stats["providers"]["aliyun"]["submits"] == 1
    assert stats["faults"][0]["hits"] == 1 and stats["faults"][0]["remaining"] == 0


async def test_http_429_and_500_on_liblib(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="liblibai", stage="submit", kind="http_429", count=1)
    await add_fault(http, sim, provider="liblibai", stage="poll", kind="http_500", count=1)
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, answer["code"]) == (429, 429)
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "x"})
    assert (status, answer["code"]) == (500, 200000)
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "x"})
    assert (status, answer["code"]) == (200, 100051)


async def test_rate_zero_never_fires_and_rate_one_always(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="poll", kind="http_500", rate=0.0)
    for _ in range(5):
        status, _, _ = await dashscope(http, sim, "GET", "/api/v1/tasks/x")
        assert status == 200
    async with http.delete(f"{sim.url}/_sim/faults"):
        pass
    await add_fault(http, sim, provider="*", stage="poll", kind="http_500", rate=1.0)
    for _ in range(3):
        status, body, _ = await dashscope(http, sim, "GET", "/api/v1/tasks/x")
        assert (status, body["code"]) == (500, "InternalError")
    status, _ = await liblib(http, sim, STATUS, {"generateUuid": "x"})
    assert status == 500  # "*" matches both providers


async def test_timeout_holds_without_blocking_others(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="submit", kind="timeout", count=1, seconds=10)
    headers = {"Authorization": "Bearer sk-sim", "X-DashScope-Async": "enable"}

    async def held() -> None:
        async with http.post(
            f"{sim.url}{T2I}", json=t2i_body(n=1), headers=headers, timeout=aiohttp.ClientTimeout(total=1.0)
        ) as resp:
            await resp.read()

    pending = asyncio.create_task(held())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    async with http.get(f"{sim.url}/_sim/health") as resp:  # the server still answers meanwhile
        assert resp.status == 200
    assert time.monotonic() - started < 0.5
    with pytest.raises(TimeoutError):
        await pending
    assert sim.stats()["providers"]["aliyun"]["submits"] == 0


async def test_timeout_hold_is_released_when_the_emulator_stops(http: aiohttp.ClientSession) -> None:
    sim = Simulator(SimulatorConfig())
    await sim.start()
    try:
        await add_fault(http, sim, provider="liblibai", stage="poll", kind="timeout", seconds=60)
        request = asyncio.create_task(liblib(http, sim, STATUS, {"generateUuid": "x"}))
        await asyncio.sleep(0.2)
    finally:
        started = time.monotonic()
        await sim.stop()
    assert time.monotonic() - started < 3
    with pytest.raises(aiohttp.ClientError):
        await request


async def test_reset_drops_the_connection(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="liblibai", stage="submit", kind="reset", count=1)
    with pytest.raises(aiohttp.ClientError):
        await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, answer["code"]) == (200, 0)
    assert sim.stats()["providers"]["liblibai"]["submits"] == 1


async def test_reply_lost_after_the_task_was_created(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """phase "after": the provider acted (a task exists and counts) but the client never hears of it."""
    await add_fault(http, sim, provider="aliyun", stage="submit", kind="reset", count=1, phase="after")
    with pytest.raises(aiohttp.ClientError):
        await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    stats = sim.stats()["providers"]["aliyun"]
    assert stats["submits"] == 1 and stats["tasks"] == 1


async def test_malformed_json(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="poll", kind="malformed_json", count=1)
    headers = {"Authorization": "Bearer sk-sim"}
    async with http.get(f"{sim.url}/api/v1/tasks/x", headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        text = await resp.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_slow_answer(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="cancel", kind="slow", count=1, seconds=0.5)
    started = time.monotonic()
    status, body, _ = await dashscope(http, sim, "POST", "/api/v1/tasks/x/cancel")
    assert time.monotonic() - started >= 0.45
    assert (status, body["code"]) == (400, "UnsupportedOperation")


async def test_cancel_stage_http_500(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 5})
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await add_fault(http, sim, provider="aliyun", stage="cancel", kind="http_500", count=1)
    task_id = submitted["output"]["task_id"]
    status, _, _ = await dashscope(http, sim, "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert status == 500
    status, _, _ = await dashscope(http, sim, "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert status == 200


async def test_input_moderation(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, stage="submit", kind="moderation", count=2)
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    assert (status, body["code"]) == (400, "DataInspectionFailed")
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, answer["code"]) == (200, 100052)
    stats = sim.stats()["providers"]
    assert stats["aliyun"]["rejected"] == 1 and stats["aliyun"]["submits"] == 0
    assert stats["liblibai"]["rejected"] == 1 and stats["liblibai"]["submits"] == 0


async def test_dashscope_task_outcomes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    expected = {
        "moderation": "DataInspectionFailed",
        "fail": "InternalError",
        "status7": "InternalError.Timeout",
    }
    for kind, code in expected.items():
        await add_fault(http, sim, provider="aliyun", stage="poll", kind=kind, count=1)
        _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=2))
        _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
        output = final["output"]
        assert (output["task_status"], output["code"]) == ("FAILED", code)
        assert output["message"]
        assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}
        assert "results" not in output
    assert sim.stats()["providers"]["aliyun"]["tasks_by_state"]["FAILED"] == 3


async def test_dashscope_partial_success(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, provider="aliyun", stage="poll", kind="partial", count=1)
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=4))
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    output = final["output"]
    assert output["task_status"] == "SUCCEEDED"
    failed = [r for r in output["results"] if "code" in r]
    assert len(failed) == 2 and all(r["code"] == "InternalError.Timeout" and "url" not in r for r in failed)
    assert output["task_metrics"] == {"TOTAL": 4, "SUCCEEDED": 2, "FAILED": 2}
    assert final["usage"] == {"image_count": 2}


async def test_outcome_fault_added_after_submit_applies(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Outcome faults are drawn when a task finishes, not when it is submitted."""
    sim.config.update({"task_seconds": 0.5})
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await add_fault(http, sim, provider="aliyun", stage="poll", kind="fail", count=1)
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert final["output"]["task_status"] == "FAILED"


async def test_liblib_task_outcomes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    start = sim.config.liblib_initial_balance

    async def run(kind: str, **extra: Any) -> tuple[list[int], dict[str, Any]]:
        await add_fault(http, sim, provider="liblibai", stage="poll", kind=kind, count=1, **extra)
        _, submitted = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square", imgCount=2))
        return await poll_liblib(http, sim, submitted["data"]["generateUuid"])

    seen, answer = await run("fail")
    assert seen[-1] == 6 and answer["code"] == 0 and answer["data"]["images"] == []
    assert answer["data"]["accountBalance"] == start  # refunded

    seen, answer = await run("status7")
    assert seen[-1] == 7 and answer["data"]["images"] == [] and answer["data"]["percentCompleted"] == 1.0
    assert answer["data"]["accountBalance"] == start

    seen, answer = await run("moderation")
    assert answer["code"] == 100055 and answer["data"]["generateStatus"] == 6

    seen, answer = await run("moderation", variant="audit")
    assert (answer["code"], seen[-1], answer["data"]["images"]) == (0, 5, [])

    seen, answer = await run("moderation", variant="audit_listed")
    assert (answer["code"], seen[-1]) == (0, 5)
    assert [(i["imageUrl"], i["auditStatus"]) for i in answer["data"]["images"]] == [("", 4), ("", 4)]

    seen, answer = await run("partial")
    assert seen[-1] == 5 and len(answer["data"]["images"]) == 1
    assert answer["data"]["images"][0]["auditStatus"] == 3

    seen, answer = await run("partial", variant="audit_listed")
    assert [i["auditStatus"] for i in answer["data"]["images"]] == [3, 4]

    by_state = sim.stats()["providers"]["liblibai"]["tasks_by_state"]
    assert (by_state["5"], by_state["6"], by_state["7"]) == (4, 2, 1)


async def test_download_faults(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = await liblib_image_url(http, sim)

    await add_fault(http, sim, provider="liblibai", stage="download", kind="http_500", count=1)
    async with http.get(url) as resp:
        assert resp.status == 500

    await add_fault(http, sim, provider="liblibai", stage="download", kind="truncated", count=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as resp:
            assert resp.content_length is not None and resp.content_length > 0
            await resp.read()

    await add_fault(http, sim, provider="liblibai", stage="download", kind="malformed_json", count=1)
    async with http.get(url) as resp:
        corrupt = await resp.read()
    assert corrupt.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(OSError), Image.open(io.BytesIO(corrupt)) as image:  # UnidentifiedImageError
        image.load()

    await add_fault(http, sim, provider="liblibai", stage="download", kind="slow", count=1, seconds=0.6)
    started = time.monotonic()
    async with http.get(url) as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert resp.content_length is None
        slow = await resp.read()
    assert time.monotonic() - started >= 0.5
    with Image.open(io.BytesIO(slow)) as image:
        assert image.size == (1024, 1024)

    # Every time (rate 1): aiohttp itself retries a GET once when the connection drops.
    reset = await add_fault(http, sim, provider="liblibai", stage="download", kind="reset", rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        async with http.get(url) as resp:
            await resp.read()
    async with http.delete(f"{sim.url}/_sim/faults/{reset['id']}") as resp:
        assert resp.status == 200

    async with http.get(url) as resp:  # faults used up: a normal download again
        assert resp.status == 200
        assert len(await resp.read()) == resp.content_length
    stats = sim.stats()["providers"]["liblibai"]
    assert stats["downloads"] >= 7  # 4 faulty, at least 2 resets (aiohttp retries), 1 good
    assert stats["faults_injected"] == stats["downloads"] - 1  # all but the last
