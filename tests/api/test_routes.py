"""The routes of design.md §6 on a live daemon: create (async and waiting), list, cancel, models, health, metrics,
and the hardening: size cap, JSON errors in the envelope, rate limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imaged.daemon import Daemon
from imaged.simulator import Simulator

from ..conftest import make_daemon
from ..support import Bus
from .conftest import Credentials, auth_settings
from .support import assert_error_envelope, call, seed_json, wait_status

pytestmark = pytest.mark.timeout(90)


async def test_create_and_wait_returns_the_result(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    body = seed_json("star-3-alpha-t2i", is_async=False)
    reply = await call(
        http,
        "POST",
        f"{api_daemon.http_url}/api/v1/tasks",
        headers=creds.headers("alice", "rs256"),
        json_body=body,
    )
    assert reply.status == 200, reply.text
    results = reply.body["results"]
    assert set(results) == {"task_id", "status", "result", "error"}
    assert results["status"] == "completed" and results["error"] is None
    image = results["result"]["images"][0]
    assert await asyncio.to_thread(Path(image["local_path"]).is_file)
    assert (image["width"], image["height"]) == (768, 1024)


async def test_list_filters_and_pages_newest_first(
    api_daemon: Daemon, creds: Credentials, bus: Bus, http: aiohttp.ClientSession
) -> None:
    base = api_daemon.http_url
    alice = creds.headers("alice")
    ids = []
    for n in range(5):
        body = seed_json("wanx2.1-t2i-turbo", task_id=f"list-{n}")
        reply = await call(http, "POST", f"{base}/api/v1/tasks/", headers=alice, json_body=body)
        assert reply.status == 200, reply.text
        ids.append(reply.body["results"]["task_id"])
        await asyncio.sleep(0.01)  # distinct creation times
    await bus.wait_terminal(ids, within=60)
    newest_first = list(reversed(ids))

    reply = await call(http, "GET", f"{base}/api/v1/tasks?limit=2", headers=alice)
    page = reply.body["results"]
    assert [t["task_id"] for t in page["tasks"]] == newest_first[:2]
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == (5, 2, 0, 2)
    reply = await call(http, "GET", f"{base}/api/v1/tasks/?limit=2&offset=4", headers=alice)
    page = reply.body["results"]
    assert [t["task_id"] for t in page["tasks"]] == newest_first[4:]
    assert page["next_offset"] is None
    reply = await call(http, "GET", f"{base}/api/v1/tasks?status=completed", headers=alice)
    assert reply.body["results"]["total"] == 5
    reply = await call(http, "GET", f"{base}/api/v1/tasks?status=pending", headers=alice)
    assert reply.body["results"] == {"tasks": [], "total": 0, "limit": 20, "offset": 0, "next_offset": None}
    reply = await call(http, "GET", f"{base}/api/v1/tasks", headers=creds.headers("bob", "hs256"))
    assert reply.body["results"]["total"] == 0
    for query in ("status=bogus", "limit=0", "limit=101", "limit=abc", "offset=-1", "offset=1e3"):
        reply = await call(http, "GET", f"{base}/api/v1/tasks?{query}", headers=alice)
        assert_error_envelope(reply, 400)


async def test_cancel_a_running_task(
    api_daemon: Daemon, creds: Credentials, bus: Bus, simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.config.task_seconds = 60.0
    base = api_daemon.http_url
    alice = creds.headers("alice", "hs256")
    reply = await call(
        http, "POST", f"{base}/api/v1/tasks/", headers=alice, json_body=seed_json("wanx2.1-t2i-turbo")
    )
    task_id = reply.body["results"]["task_id"]
    await wait_status(http, f"{base}/api/v1/tasks/{task_id}/status", alice, {"processing"}, within=20)

    reply = await call(http, "POST", f"{base}/api/v1/tasks/{task_id}/cancel", headers=creds.headers("bob"))
    assert_error_envelope(reply, 404)
    reply = await call(http, "POST", f"{base}/api/v1/tasks/{task_id}/cancel", headers=alice)
    assert reply.status == 202, reply.text
    assert reply.body["success"] is True and reply.body["results"]["cancel_requested"] is True

    terminal = await bus.wait_terminal([task_id], within=20)
    assert terminal[task_id]["status"] == "canceled"
    assert terminal[task_id]["error"]["category"] == "canceled"
    reply = await call(http, "GET", f"{base}/api/v1/tasks/{task_id}/result", headers=alice)
    assert reply.body["results"]["status"] == "canceled"
    reply = await call(http, "POST", f"{base}/api/v1/tasks/{task_id}/cancel", headers=alice)
    assert_error_envelope(reply, 409)


async def test_bad_requests_answer_in_the_envelope(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    base = api_daemon.http_url
    alice = creds.headers("alice")
    create = f"{base}/api/v1/tasks/"
    cap = api_daemon.settings.max_request_bytes
    big = seed_json("wanx2.1-t2i-turbo", metadata={"pad": "x" * cap})
    reply = await call(http, "POST", create, headers=alice, json_body=big)
    assert_error_envelope(reply, 413)
    assert str(cap) in reply.body["message"]

    async def chunks() -> object:
        for _ in range(cap // 1024 + 2):
            yield b" " * 1024

    async with http.post(create, headers=alice, data=chunks()) as resp:
        assert resp.status == 413
        body = await resp.json()
    assert body["success"] is False and body["results"] is None

    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "no-such-model", "parameters": {"prompt": "x"}}', 422, "unknown model"),
        (b'{"model": "wanx2.1-t2i-turbo", "parameters": {}}', 422, "prompt"),
        (
            b'{"model": "wanx2.1-t2i-turbo", "provider": "liblibai", "parameters": {"prompt": "x"}}',
            422,
            "served by",
        ),
        (b'{"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "x"}, "extra": 1}', 422, "extra"),
        (
            b'{"model": "wanx2.1-t2i-turbo", "task_id": "bad id!", "parameters": {"prompt": "x"}}',
            422,
            "task_id",
        ),
    ]
    for data, status, words in cases:
        reply = await call(
            http, "POST", create, headers={**alice, "Content-Type": "application/json"}, data=data
        )
        assert_error_envelope(reply, status)
        assert words in reply.body["message"], reply.body["message"]

    reply = await call(http, "GET", f"{base}/api/v1/nothing-here", headers=alice)
    assert_error_envelope(reply, 404)
    reply = await call(http, "DELETE", f"{base}/api/v1/tasks/x/status", headers=alice)
    assert_error_envelope(reply, 405)
    assert "GET" in reply.headers.get("Allow", "")


async def test_models_health_and_metrics(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    base = api_daemon.http_url
    reply = await call(http, "GET", f"{base}/api/v1/models", headers=creds.headers("bob", "rs256"))
    assert reply.status == 200 and reply.body["success"] is True
    models = {m["name"]: m for m in reply.body["results"]}
    assert {"wanx2.1-t2i-turbo", "star-3-alpha-t2i", "star-3-alpha-i2i", "liblib-custom"} <= set(models)
    assert models["wanx2.1-t2i-turbo"]["provider"] == "aliyun" and models["wanx2.1-t2i-turbo"]["available"]
    reply = await call(http, "GET", f"{base}/health/ready")
    assert reply.status == 200 and reply.body["ready"] is True
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    assert 'imaged_http_requests_total{code="200",method="GET",route="/api/v1/models"} 1.0' in text


async def test_create_rate_limit_per_tenant(
    namespace: str,
    tmp_path: Path,
    simulator: Simulator,
    rsa_private: rsa.RSAPrivateKey,
    bus: Bus,
    http: aiohttp.ClientSession,
) -> None:
    settings = auth_settings(
        namespace, tmp_path / "images", simulator, rsa_private, create_rate_per_s=0.2, create_burst=3
    )
    daemon = make_daemon(settings, simulator)
    await daemon.start()
    try:
        creds = Credentials(rsa_private)
        url = f"{daemon.http_url}/api/v1/tasks/"
        invalid = {"model": "no-such-model"}  # the limit applies before validation: no task is made
        for _ in range(3):
            reply = await call(http, "POST", url, headers=creds.headers("alice", "hs256"), json_body=invalid)
            assert reply.status == 422
        reply = await call(http, "POST", url, headers=creds.headers("alice", "rs256"), json_body=invalid)
        assert_error_envelope(reply, 429)
        assert 1 <= int(reply.headers["Retry-After"]) <= 5
        reply = await call(http, "POST", url, headers=creds.headers("bob", "hs256"), json_body=invalid)
        assert reply.status == 422  # another tenant has its own bucket
    finally:
        await daemon.stop()
