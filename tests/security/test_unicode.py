"""Scenario 5: requests with invalid Unicode (lone surrogates, which no database or UTF-8 text can hold) are refused
as invalid requests, over HTTP (422) and over AMQP (one task.failed), without a traceback."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest

from ..support import Bus
from .conftest import StartDaemon
from .support import MODEL, LeakLedger, LogCapture, crash_signs, daemon_secrets, http_call, stored_doc

pytestmark = pytest.mark.timeout(120)


def surrogate_body(task_id: str, where: str = "prompt") -> bytes:
    """A request whose JSON carries the escape ``\\ud800`` (a lone surrogate) in a value or a key."""
    parameters: dict[str, object] = {"prompt": "x", "\ud800": 1} if where == "key" else {"prompt": "x\ud800"}
    return json.dumps(
        {"model": MODEL, "task_id": task_id, "parameters": parameters}
    ).encode()  # ASCII escapes


async def test_a_lone_surrogate_over_http_is_422(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, logs: LogCapture, ledger: LeakLedger
) -> None:
    daemon = await start_daemon()
    assert daemon.http_url is not None
    task_id = secrets.token_hex(12)
    body = surrogate_body(task_id)
    assert b'"x\\ud800"' in body
    reply = await http_call(
        http,
        "POST",
        f"{daemon.http_url}/api/v1/tasks/",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    envelope = reply.json()
    assert reply.status == 422, reply.text
    assert envelope["success"] is False and envelope["results"] is None
    assert "invalid Unicode" in envelope["message"]
    assert "Traceback" not in reply.text
    missing = await http_call(http, "GET", f"{daemon.http_url}/api/v1/tasks/{task_id}/status")
    assert missing.status == 404
    assert crash_signs(logs.lines) == []
    assert (
        ledger.check("5 lone surrogates", daemon_secrets(daemon), {"HTTP bodies": reply.text + missing.text})
        == 0
    )
    print(
        f"HTTP POST with prompt 'x\\ud800' -> {reply.status} {envelope['message']!r}, no task, no traceback"
    )


async def test_a_lone_surrogate_over_amqp_fails_once_as_invalid_request(
    start_daemon: StartDaemon, bus: Bus, logs: LogCapture, ledger: LeakLedger
) -> None:
    daemon = await start_daemon()
    ids = {where: secrets.token_hex(12) for where in ("prompt", "key")}
    for where, task_id in ids.items():
        await bus.publish(surrogate_body(task_id, where))
    events = await bus.wait_terminal(ids.values(), within=20)
    await asyncio.sleep(0.5)  # room for a second event
    for task_id in ids.values():
        assert [e["type"] for e in bus.events[task_id]] == ["task.failed"], bus.events[task_id]
        error = events[task_id]["error"]
        assert error["category"] == "invalid_request" and "invalid Unicode" in error["message"], error
        doc = await stored_doc(daemon, task_id)
        assert doc["status"] == "failed"
    assert crash_signs(logs.lines) == []
    texts = {"events": json.dumps([bus.events[t] for t in ids.values()]), "logs": logs.text}
    assert ledger.check("5 lone surrogates", daemon_secrets(daemon), texts) == 0
    print(
        f"AMQP request with '\\ud800' in the prompt and in a parameter key -> one task.failed each, "
        f"invalid_request: {events[ids['prompt']]['error']['message']!r}; error/traceback log lines 0"
    )
