"""The DashScope side of the emulator, over real HTTP, and the official `dashscope` SDK against it."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import dashscope as dashscope_sdk
import pytest
from dashscope import ImageSynthesis

from imaged.simulator import Simulator, key_label

from .conftest import API_KEY, I2I, T2I, Listener, dashscope, poll_dashscope, t2i_body

TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
pytestmark = pytest.mark.timeout(30)


async def test_text2image_runs_pending_running_succeeded(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 1.0})  # PENDING for the first 0.2 s
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(size="768*512", n=2, seed=40))
    assert status == 200
    assert body["output"]["task_status"] == "PENDING"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["output"]["task_id"])
    assert body["request_id"]

    seen, final = await poll_dashscope(http, sim, body["output"]["task_id"])
    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    output = final["output"]
    for field in ("submit_time", "scheduled_time", "end_time"):
        assert TIME_FORMAT.match(output[field]), output[field]
    assert output["submit_time"] <= output["scheduled_time"] <= output["end_time"]
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert final["usage"] == {"image_count": 2}
    results = output["results"]
    assert [r["orig_prompt"] for r in results] == ["一只小猫", "一只小猫"]
    assert all(r["actual_prompt"].startswith("一只小猫") for r in results)
    # seed + i picks each image; the same seed always gives the same image
    assert "_768x512_c0.png?Expires=" in results[0]["url"]
    assert "_768x512_c1.png?Expires=" in results[1]["url"]
    assert all(r["url"].startswith(f"{sim.url}/_sim/images/") for r in results)


async def test_running_answer_carries_metrics(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 5})
    _, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await asyncio.sleep(1.1)  # past the PENDING share (20%)
    status, polled, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{body['output']['task_id']}")
    assert status == 200
    assert polled["output"]["task_status"] == "RUNNING"
    assert polled["output"]["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0}
    assert "results" not in polled["output"]


async def test_n_defaults_to_four_like_the_real_api(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "wanx2.1-t2i-plus", "input": {"prompt": "cat"}}
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, body)
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert len(final["output"]["results"]) == 4
    assert final["usage"]["image_count"] == 4
    assert all("_1024x1024_" in r["url"] for r in final["output"]["results"])


async def test_prompt_extend_false_gives_no_actual_prompt(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    long_prompt = "猫" * 1000
    body = {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": long_prompt},
        "parameters": {"n": 1, "prompt_extend": False},
    }
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, body)
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    result = final["output"]["results"][0]
    assert "actual_prompt" not in result
    assert result["orig_prompt"] == "猫" * 800  # long prompts are truncated, not rejected


async def test_missing_or_wrong_key_is_401(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1), key=None)
    assert (status, body["code"]) == (401, "InvalidApiKey")
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1), key="sk-wrong")
    assert (status, body["code"]) == (401, "InvalidApiKey")
    assert "output" not in body and body["request_id"]
    status, body, _ = await dashscope(http, sim, "GET", "/api/v1/tasks/whatever", key="sk-wrong")
    assert (status, body["code"]) == (401, "InvalidApiKey")
    stats = sim.stats()["providers"]["aliyun"]
    assert stats["auth_failures"] == 3
    assert stats["submits"] == 0


async def test_synchronous_call_is_refused(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1), async_header=False)
    assert status == 403
    assert body["code"] == "AccessDenied"
    assert body["message"] == "current user api does not support synchronous calls"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (t2i_body(size="1024x1024"), 400, "InvalidParameter"),
        (t2i_body(size="2000*1024"), 400, "InvalidParameter"),
        (t2i_body(size="511*1024"), 400, "InvalidParameter"),
        (t2i_body(n=5), 400, "InvalidParameter"),
        (t2i_body(n=0), 400, "InvalidParameter"),
        (t2i_body(n="2"), 400, "InvalidParameter"),
        (t2i_body(seed=-1), 400, "InvalidParameter"),
        (t2i_body(watermark="yes"), 400, "InvalidParameter"),
        ({"model": "wanx2.1-t2i-turbo", "input": {"negative_prompt": "x"}}, 400, "InvalidParameter"),
        (
            {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "x", "negative_prompt": "n" * 501}},
            400,
            "InvalidParameter",
        ),
        ({"model": "wanx2.1-t2i-turbo"}, 400, "BadRequest.EmptyInput"),
        ({"input": {"prompt": "x"}}, 400, "BadRequest.EmptyModel"),
        ({"model": "no-such-model", "input": {"prompt": "x"}}, 404, "ModelNotFound"),
        ({"model": "wanx2.1-imageedit", "input": {"prompt": "x"}}, 400, "InvalidParameter"),
        (
            {"model": "wanx-v1", "input": {"prompt": "x"}, "parameters": {"size": "800*800"}},
            400,
            "InvalidParameter",
        ),
        ([1, 2], 400, "InvalidParameter"),
    ],
)
async def test_invalid_submits_get_the_real_codes(
    sim: Simulator, http: aiohttp.ClientSession, body: Any, status: int, code: str
) -> None:
    got_status, got, _ = await dashscope(http, sim, "POST", T2I, body)
    assert (got_status, got["code"]) == (status, code)
    assert got["message"] and got["request_id"] and "output" not in got
    stats = sim.stats()["providers"]["aliyun"]
    assert (stats["submits"], stats["rejected"]) == (0, 1)


async def test_invalid_json_body_is_rejected(sim: Simulator, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "X-DashScope-Async": "enable"}
    async with http.post(f"{sim.url}{T2I}", data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "InvalidParameter"


async def test_wanx_v1_accepts_its_fixed_sizes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"model": "wanx-v1", "input": {"prompt": "x"}, "parameters": {"size": "720*1280", "n": 1}}
    status, submitted, _ = await dashscope(http, sim, "POST", T2I, body)
    assert status == 200
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert "_720x1280_" in final["output"]["results"][0]["url"]


async def test_unknown_task_is_unknown_with_http_200(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, body, _ = await dashscope(http, sim, "GET", "/api/v1/tasks/0385dc79-0000-0000-0000-000000000000")
    assert status == 200
    assert body["output"] == {"task_id": "0385dc79-0000-0000-0000-000000000000", "task_status": "UNKNOWN"}


async def test_another_accounts_task_is_unknown(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"dashscope_extra_api_keys": ["sk-other"]})
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1), key="sk-other")
    task_id = submitted["output"]["task_id"]
    _, body, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
    assert body["output"]["task_status"] == "UNKNOWN"
    credentials = sim.stats()["providers"]["aliyun"]["credentials"]
    assert credentials[key_label("sk-other")]["submits"] == 1
    assert credentials[key_label(API_KEY)]["submits"] == 0
    assert "sk-other" not in str(sim.stats())


async def test_cancel_only_while_pending(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 3})
    _, first, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    task_id = first["output"]["task_id"]
    status, canceled, _ = await dashscope(http, sim, "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert status == 200 and canceled["request_id"] and "code" not in canceled
    _, polled, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
    assert polled["output"]["task_status"] == "CANCELED"
    assert TIME_FORMAT.match(polled["output"]["end_time"])
    # once canceled, no longer PENDING: a second cancel fails like any non-pending task
    status, again, _ = await dashscope(http, sim, "POST", f"/api/v1/tasks/{task_id}/cancel")
    assert (status, again["code"]) == (400, "UnsupportedOperation")

    _, second, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await asyncio.sleep(0.8)  # RUNNING now
    status, refused, _ = await dashscope(
        http, sim, "POST", f"/api/v1/tasks/{second['output']['task_id']}/cancel"
    )
    assert (status, refused["code"]) == (400, "UnsupportedOperation")
    assert "PENDING" in refused["message"]
    stats = sim.stats()["providers"]["aliyun"]
    assert stats["cancels"] == 3
    assert stats["tasks_by_state"]["CANCELED"] == 1
    assert stats["in_flight"] == 1


async def test_image_edit_never_fetches_its_input(
    sim: Simulator, http: aiohttp.ClientSession, listener: Listener
) -> None:
    body = {
        "model": "wanx2.1-imageedit",
        "input": {
            "function": "stylization_all",
            "prompt": "转换成法国绘本风格",
            "base_image_url": listener.url,
        },
        "parameters": {"seed": 7},
    }
    status, submitted, _ = await dashscope(http, sim, "POST", I2I, body)
    assert status == 200
    _, final = await poll_dashscope(http, sim, submitted["output"]["task_id"])
    assert final["output"]["task_status"] == "SUCCEEDED"
    assert len(final["output"]["results"]) == 1  # n defaults to 1 for image edits
    async with http.get(final["output"]["results"][0]["url"]) as resp:
        assert resp.status == 200
    assert listener.connections == 0


@pytest.mark.parametrize(
    "inputs",
    [
        {"function": "no_such_function", "prompt": "x", "base_image_url": "http://example.invalid/a.png"},
        {"function": "stylization_all", "prompt": "x"},
        {"function": "stylization_all", "prompt": "x", "base_image_url": "file:///etc/passwd"},
        {
            "function": "description_edit_with_mask",
            "prompt": "x",
            "base_image_url": "http://example.invalid/a.png",
        },
    ],
)
async def test_image_edit_validation(
    sim: Simulator, http: aiohttp.ClientSession, inputs: dict[str, Any]
) -> None:
    status, body, _ = await dashscope(http, sim, "POST", I2I, {"model": "wanx2.1-imageedit", "input": inputs})
    assert status == 400
    assert body["code"] in ("InvalidParameter", "InvalidURL")


async def test_submit_rate_limit(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"dashscope_submit_per_second": 2.0})
    answers = await asyncio.gather(*(dashscope(http, sim, "POST", T2I, t2i_body(n=1)) for _ in range(3)))
    statuses = sorted((status, body.get("code")) for status, body, _ in answers)
    assert statuses == [(200, None), (200, None), (429, "Throttling.RateQuota")]
    await asyncio.sleep(0.6)
    status, _, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    assert status == 200
    assert sim.stats()["providers"]["aliyun"]["rate_limited"] == 1


async def test_two_concurrent_tasks_cap_counts_tasks_until_they_finish(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.config.update({"dashscope_concurrency_limit": 2, "task_seconds": 0.8})
    results = []
    for _ in range(3):
        status, body, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
        results.append((status, body.get("code")))
    assert results == [(200, None), (200, None), (429, "Throttling")]
    # Nobody polls: the tasks still leave the cap when they finish running.
    await asyncio.sleep(0.9)
    status, _, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    assert status == 200
    stats = sim.stats()["providers"]["aliyun"]
    assert stats["concurrency_limit_hits"] == 1
    assert stats["max_concurrent"] == 2
    assert stats["submits"] == 3
    credential = stats["credentials"][key_label(API_KEY)]
    assert (credential["max_concurrent"], credential["concurrency_limit_hits"]) == (2, 1)


async def test_official_sdk_completes_a_task(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "base_http_api_url", sim.dashscope_base_url)

    def run() -> Any:
        task = ImageSynthesis.async_call(
            model="wanx2.1-t2i-turbo",
            prompt="一只可爱的小猫咪在草地上玩耍",
            n=1,
            size="1024*1024",
            api_key=API_KEY,
        )
        assert task.status_code == 200, task
        assert task.output.task_status == "PENDING"
        return ImageSynthesis.wait(task, api_key=API_KEY)

    started = time.monotonic()
    result = await asyncio.to_thread(run)
    assert time.monotonic() - started < 15
    assert result.status_code == 200
    assert result.output.task_status == "SUCCEEDED"
    assert len(result.output.results) == 1
    assert result.output.results[0].url.startswith(f"{sim.url}/_sim/images/")
    assert result.usage.image_count == 1
    assert sim.stats()["providers"]["aliyun"]["submits"] == 1


async def test_official_sdk_sees_errors_and_cancel(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashscope_sdk, "base_http_api_url", sim.dashscope_base_url)
    sim.config.update({"task_seconds": 5})

    def run() -> tuple[Any, Any, Any]:
        bad = ImageSynthesis.async_call(model="wanx2.1-t2i-turbo", prompt="x", size="9*9", api_key=API_KEY)
        task = ImageSynthesis.async_call(model="wanx2.1-t2i-turbo", prompt="x", n=1, api_key=API_KEY)
        # cancel is inherited from the SDK's base class but missing from its type stub
        canceled = ImageSynthesis.cancel(task, api_key=API_KEY)  # type: ignore[attr-defined]
        fetched = ImageSynthesis.fetch(task, api_key=API_KEY)
        return bad, canceled, fetched

    bad, canceled, fetched = await asyncio.to_thread(run)
    assert (bad.status_code, bad.code) == (400, "InvalidParameter")
    assert canceled.status_code == 200
    assert fetched.output.task_status == "CANCELED"
