"""Scenario 2: a provider that echoes the API key (whole, masked, in an Authorization header, in a plain-text 500)
never makes the daemon repeat it: not in the stored task, the HTTP answers, the events, the logs or the metrics,
nor in the error of a later task refused while the credential is out of rotation.

The daemon runs as ``imaged run`` (JSON logs at DEBUG through its own redacting root handler), so the log check
reads exactly what an operator's log collector would get.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pymongo import AsyncMongoClient

from imaged.daemon import Daemon

from ..support import MONGODB_URL, Bus
from .conftest import SpawnDaemon, StartDaemon
from .hostile import HostileDashScope, HostileTask, Script
from .support import (
    DASHSCOPE_KEY,
    DASHSCOPE_KEY_MASKED,
    LeakLedger,
    daemon_secrets,
    http_call,
    leak_count,
    request,
    request_bytes,
)

pytestmark = pytest.mark.timeout(120)

#: variant -> (HTTP status, JSON body or plain text) of the submit's answer
ECHOES: dict[str, tuple[int, Any]] = {
    "whole": (
        401,
        {
            "code": "InvalidApiKey",
            "message": f"Incorrect API key provided: {DASHSCOPE_KEY}. You can find your API-KEY in the console.",
        },
    ),
    "masked": (
        401,
        {"code": "InvalidApiKey", "message": f"Incorrect API key provided: {DASHSCOPE_KEY_MASKED}"},
    ),
    "bearer": (
        401,
        {
            "code": "InvalidApiKey",
            "message": f"Invalid header Authorization: Bearer {DASHSCOPE_KEY} (rejected)",
        },
    ),
    "plain500": (
        500,
        f"upstream failed. request was: Authorization: Bearer {DASHSCOPE_KEY}\napi_key={DASHSCOPE_KEY}\n",
    ),
}


def echo(status: int, body: Any) -> Script:
    async def submit(task: HostileTask) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/plain")
        return web.json_response(body, status=status)

    return Script(submit=submit)


async def stored_docs(namespace: str, ids: list[str]) -> str:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    try:
        docs = [doc async for doc in client[namespace]["tasks"].find({"_id": {"$in": ids}})]
    finally:
        await client.close()
    assert len(docs) == len(ids)
    return json.dumps(docs, default=str, ensure_ascii=False)


@pytest.mark.parametrize("variant", list(ECHOES))
async def test_an_echoed_key_is_never_repeated(
    variant: str,
    spawn_daemon: SpawnDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    namespace: str,
    ledger: LeakLedger,
) -> None:
    status, body = ECHOES[variant]
    prompt = f"echo-{variant}"
    hostile.script(prompt, echo(status, body))
    daemon = await spawn_daemon()
    base = f"http://127.0.0.1:{daemon.port}"

    first = secrets.token_hex(12)
    timeout = {"timeout_s": 2} if status >= 500 else {}  # a 500 is retried until the deadline
    await bus.publish(request_bytes(prompt, first, **timeout))
    event = (await bus.wait_terminal([first], within=20))[first]
    assert event["status"] == "failed"
    ids = [first]
    if status == 401:
        assert (event["error"]["category"], event["error"]["code"]) == ("auth", "InvalidApiKey")
        # The credential is out of rotation now: the next task is refused, naming the last error.
        second = secrets.token_hex(12)
        await bus.publish(request_bytes("echo-second", second))
        refused = (await bus.wait_terminal([second], within=20))[second]
        assert refused["error"]["code"] == "no_credential"
        assert refused["error"]["message"].startswith("every aliyun credential is out of rotation (last: ")
        ids.append(second)
    else:
        assert event["error"]["category"] == "timeout"
    # The daemon did send the key, and the provider did echo it.
    assert hostile.submits_of(prompt)[0].authorization == f"Bearer {DASHSCOPE_KEY}"

    texts: dict[str, str] = {"stored tasks": await stored_docs(namespace, ids)}
    for task_id in ids:
        for route in ("status", "result"):
            reply = await http_call(http, "GET", f"{base}/api/v1/tasks/{task_id}/{route}")
            assert reply.status == 200, reply.text
            texts[f"GET {route} {task_id[:6]}"] = reply.text
        texts[f"events {task_id[:6]}"] = json.dumps(bus.events[task_id], ensure_ascii=False)
    texts["/metrics"] = (await http_call(http, "GET", f"{base}/metrics")).text
    assert await daemon.terminate() == 0
    texts["logs"] = daemon.log_path.read_text(errors="replace")
    assert "taken out of rotation" in texts["logs"] or status >= 500

    found = {where: leak_count(DASHSCOPE_KEY, text) for where, text in texts.items()}
    total = ledger.check(f"2 echoed key ({variant})", {"aliyun_api_key": DASHSCOPE_KEY}, texts)
    message = event["error"]["message"]
    second_message = bus.terminal(ids[-1])[0]["error"]["message"] if len(ids) > 1 else "-"
    print(
        f"key echoed by the provider ({variant}, HTTP {status}) -> task failed "
        f"{event['error']['category']}/{event['error']['code']}: {message[:90]!r}; second task: "
        f"{second_message[:110]!r}; key or {10}-char slices in {len(texts)} places "
        f"(stored task, status/result, events, {len(texts['logs'].splitlines())} log lines, /metrics): {total}"
    )
    assert total == 0, {where: n for where, n in found.items() if n}


async def test_a_key_echoed_in_the_error_code_is_not_repeated(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    ledger: LeakLedger,
) -> None:
    hostile.script("echo-code", echo(401, {"code": f"Unauthorized:{DASHSCOPE_KEY}", "message": "denied"}))
    daemon: Daemon = await start_daemon()
    assert daemon.http_url is not None
    task_id = secrets.token_hex(12)
    await bus.publish(json.dumps(request("echo-code", task_id)).encode())
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "failed"
    texts = {
        "event": json.dumps(bus.events[task_id]),
        "GET status": (await http_call(http, "GET", f"{daemon.http_url}/api/v1/tasks/{task_id}/status")).text,
    }
    total = ledger.check("2 key echoed in the error code (probe)", daemon_secrets(daemon), texts)
    print(
        f"key echoed in the provider's error code -> stored code {event['error']['code'][:40]!r}, leaks {total}"
    )
    ledger.rows = [
        row for row in ledger.rows if not row.scenario.endswith("(probe)")
    ]  # a known gap, reported
    assert total == 0


async def test_a_key_echoed_in_an_image_url_is_not_repeated(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    ledger: LeakLedger,
) -> None:
    async def poll(task: HostileTask) -> web.StreamResponse:
        url = hostile.image_url("echo.png") + f"?token={DASHSCOPE_KEY}"
        return web.json_response(
            {"output": {"task_id": task.id, "task_status": "SUCCEEDED", "results": [{"url": url}]}}
        )

    hostile.script("echo-url", Script(poll=poll))
    daemon: Daemon = await start_daemon(download_allowed_networks=["127.0.0.0/8"])
    assert daemon.http_url is not None
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("echo-url", task_id))
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "completed", event.get("error")
    texts = {
        "event": json.dumps(bus.events[task_id]),
        "GET result": (await http_call(http, "GET", f"{daemon.http_url}/api/v1/tasks/{task_id}/result")).text,
    }
    total = ledger.check("2 key echoed in an image URL (probe)", daemon_secrets(daemon), texts)
    print(
        f"key echoed in an image URL's query -> task completed, stored url "
        f"{event['result']['images'][0]['url'].split('?')[1][:40]!r}, leaks {total}"
    )
    ledger.rows = [
        row for row in ledger.rows if not row.scenario.endswith("(probe)")
    ]  # a known gap, reported
    assert total == 0
