"""Scenario 4: provider data that used to crash-loop a job (operator keys, huge messages, a reply without end) is
cleaned, capped or refused: each task ends once, and the daemon stays up and small."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ..support import Bus
from .conftest import SpawnDaemon, StartDaemon
from .hostile import HostileDashScope, HostileTask, Script, failed, reply_json
from .support import (
    DASHSCOPE_KEY,
    LOOPBACK,
    LeakLedger,
    LogCapture,
    crash_signs,
    daemon_secrets,
    http_call,
    metric,
    request_bytes,
    stored_doc,
)

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024


def walk_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [key for key, item in value.items() for key in (key, *walk_keys(item))]
    if isinstance(value, list):
        return [key for item in value for key in walk_keys(item)]
    return []


def answer(make: Callable[[HostileTask], web.StreamResponse]) -> Script:
    """A script whose every poll is answered with ``make(task)``."""

    async def poll(task: HostileTask) -> web.StreamResponse:
        return make(task)

    return Script(poll=poll)


async def test_operator_keys_in_usage_are_stored_as_plain_names_and_the_job_runs_once(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope, logs: LogCapture, ledger: LeakLedger
) -> None:
    daemon = await start_daemon(download_allowed_networks=LOOPBACK)
    usage = {"$where": 1, "a.b": {"$gt": 2}, "image_count": 1, "note": "\ud800 lone"}
    hostile.script(
        "usage-keys",
        answer(
            lambda task: reply_json(
                {
                    "output": {
                        "task_id": task.id,
                        "task_status": "SUCCEEDED",
                        "results": [{"url": hostile.image_url(f"u-{task.id}.png"), "$actual.prompt": 1}],
                    },
                    "usage": usage,
                }
            )
        ),
    )
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("usage-keys", task_id))
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "completed", event.get("error")
    doc = await stored_doc(daemon, task_id)
    keys = walk_keys(doc["result"])
    assert not [k for k in keys if k.startswith("$") or "." in k], keys
    stored_usage = doc["result"]["usage"]
    assert stored_usage["image_count"] == 1 and "\ud800" not in json.dumps(stored_usage, ensure_ascii=False)
    assert doc["attempts"] == 1
    assert len(hostile.submits_of("usage-keys")) == 1
    assert metric(daemon, "imaged_redeliveries_total", queue="aliyun") == 0
    assert metric(daemon, "imaged_dead_letters_total", reason="crashed") == 0
    assert crash_signs(logs.lines) == []
    texts = {"events": json.dumps(bus.events[task_id]), "stored task": json.dumps(doc, default=str)}
    assert ledger.check("4 provider data", daemon_secrets(daemon), texts) == 0
    print(
        f"usage {{'$where', 'a.b': {{'$gt'}}, lone surrogate}} -> completed, stored usage {stored_usage}, "
        f"submits 1, attempts {doc['attempts']}, lane redeliveries 0, error/traceback log lines 0"
    )


async def test_huge_failure_messages_are_capped(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope, logs: LogCapture, ledger: LeakLedger
) -> None:
    daemon = await start_daemon(download_allowed_networks=LOOPBACK)
    huge = ("x" * (17 * MB)).encode()
    body_17mb = b'{"output": {"task_status": "FAILED", "code": "InternalError", "message": "' + huge + b'"}}'
    hostile.script(
        "msg-17mb", answer(lambda task: web.Response(body=body_17mb, content_type="application/json"))
    )
    hostile.script("msg-1mb", answer(lambda task: failed(task.id, "SomethingWrong", "y" * 1_000_000)))
    ids = {name: secrets.token_hex(12) for name in ("msg-17mb", "msg-1mb", "normal")}
    started = time.monotonic()
    await bus.publish(request_bytes("msg-17mb", ids["msg-17mb"], timeout_s=2))
    await bus.publish(request_bytes("msg-1mb", ids["msg-1mb"]))
    events = await bus.wait_terminal([ids["msg-17mb"], ids["msg-1mb"]], within=30)
    elapsed = time.monotonic() - started
    await bus.publish(request_bytes("normal", ids["normal"]))
    normal = (await bus.wait_terminal([ids["normal"]], within=20))[ids["normal"]]

    big = events[ids["msg-17mb"]]
    assert big["status"] == "failed" and big["error"]["category"] == "timeout", big["error"]
    assert "larger than 1048576 bytes" in big["error"]["message"]
    medium = events[ids["msg-1mb"]]
    assert medium["status"] == "failed" and medium["error"]["category"] == "provider_error", medium["error"]
    sizes = {name: len(json.dumps(events[ids[name]]["error"])) for name in ("msg-17mb", "msg-1mb")}
    assert max(sizes.values()) <= 4096, sizes
    for name in ("msg-17mb", "msg-1mb"):
        doc = await stored_doc(daemon, ids[name])
        assert len(json.dumps(doc["error"])) <= 4096
        assert len(json.dumps(doc["terminal_event"])) <= 8192
    assert normal["status"] == "completed"
    assert metric(daemon, "imaged_redeliveries_total", queue="aliyun") == 0
    assert crash_signs(logs.lines) == []
    texts = {"events": json.dumps([bus.events[t] for t in ids.values()]), "logs": logs.text}
    assert ledger.check("4 provider data", daemon_secrets(daemon), texts) == 0
    polls = hostile.tasks[hostile.submits_of("msg-17mb")[0].id].polls
    print(
        f"FAILED reply with a 17 MB message -> refused by the 1 MiB read cap, retried {polls} polls, task failed "
        f"timeout within its 2 s deadline; 1 MB message -> failed provider_error; error sizes {sizes} bytes "
        f"(message ends {medium['error']['message'][-16:]!r}); next task completed; {elapsed:.1f}s"
    )


def vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1))


async def test_a_reply_without_end_is_not_read_whole(
    spawn_daemon: SpawnDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    ledger: LeakLedger,
) -> None:
    size = 64 * MB
    sent: list[int] = []
    chunk = b"z" * (64 * 1024)

    async def endless(task: HostileTask) -> web.StreamResponse:
        assert task.request is not None
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(task.request)
        written = 0
        try:
            await response.write(b'{"output": {"task_status": "FAILED", "code": "X", "message": "')
            while written < size:
                await response.write(chunk)  # chunked: no Content-Length announces the size
                written += len(chunk)
            await response.write(b'"}}')
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the daemon hung up
        sent.append(written)
        return response

    hostile.script("endless", Script(poll=endless))
    daemon = await spawn_daemon(IMAGED_DOWNLOAD_ALLOWED_NETWORKS=json.dumps(LOOPBACK))
    assert daemon.proc is not None
    warm = secrets.token_hex(12)  # one ordinary task first: what a first task loads is not counted
    await bus.publish(request_bytes("warm-up", warm))
    assert (await bus.wait_terminal([warm], within=20))[warm]["status"] == "completed"
    before = vm_hwm_kb(daemon.proc.pid)

    task_id = secrets.token_hex(12)
    started = time.monotonic()
    await bus.publish(request_bytes("endless", task_id, timeout_s=3))
    event = (await bus.wait_terminal([task_id], within=30))[task_id]
    elapsed = time.monotonic() - started
    after = vm_hwm_kb(daemon.proc.pid)
    assert daemon.alive
    ready = await http_call(http, "GET", f"http://127.0.0.1:{daemon.port}/health/ready")
    assert ready.status == 200

    grown_mb = (after - before) / 1024
    assert event["status"] == "failed" and event["error"]["category"] == "timeout", event["error"]
    assert "larger than 1048576 bytes" in event["error"]["message"]
    assert grown_mb < 24, grown_mb
    assert sent and max(sent) < size  # no poll was read to its end
    await daemon.terminate()
    log = daemon.log_path.read_text(errors="replace")
    assert crash_signs(log.splitlines()) == []
    texts = {"logs (subprocess)": log, "events": json.dumps([bus.events[task_id], bus.events[warm]])}
    assert ledger.check("4 provider data (subprocess)", {"aliyun_api_key": DASHSCOPE_KEY}, texts) == 0
    print(
        f"poll reply of 64 MB (chunked, streamed) -> read cut at 1 MiB, {len(sent)} polls, server got out at most "
        f"{max(sent) / MB:.1f} MB before the daemon hung up; task failed timeout in {elapsed:.1f}s; daemon peak RSS "
        f"{before / 1024:.0f} -> {after / 1024:.0f} MB (+{grown_mb:.1f} MB), still ready"
    )


async def test_invalid_unicode_in_a_provider_error_code_fails_the_task_once(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope, logs: LogCapture
) -> None:
    daemon = await start_daemon(lane_delivery_limit=3)
    hostile.script("code-surrogate", answer(lambda task: failed(task.id, "Bad\ud800Code", "broken")))
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("code-surrogate", task_id))
    event = (await bus.wait_terminal([task_id], within=30))[task_id]
    crashed = crash_signs(logs.lines)
    submits = len(hostile.submits_of("code-surrogate"))
    print(
        f"FAILED reply whose code holds a lone surrogate -> task {event['status']} "
        f"{(event['error'] or {}).get('category')}/{(event['error'] or {}).get('code')!r}, "
        f"error/traceback log lines {len(crashed)}, submits {submits}, "
        f"redeliveries {metric(daemon, 'imaged_redeliveries_total', queue='aliyun'):.0f}"
    )
    assert event["status"] == "failed" and event["error"]["category"] == "provider_error"
    assert crashed == []
    assert metric(daemon, "imaged_redeliveries_total", queue="aliyun") == 0


async def test_a_huge_provider_error_code_is_capped(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope
) -> None:
    daemon = await start_daemon()
    hostile.script("code-huge", answer(lambda task: failed(task.id, "C" * 500_000, "broken")))
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("code-huge", task_id))
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    doc = await stored_doc(daemon, task_id)
    size = len(json.dumps(doc["error"]))
    print(f"FAILED reply with a 500,000-character code -> task {event['status']}, stored error {size} bytes")
    assert size <= 4096


async def test_invalid_unicode_in_a_provider_task_id_is_not_submitted_again(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope, logs: LogCapture
) -> None:
    async def submit(task: HostileTask) -> web.StreamResponse:
        return reply_json({"output": {"task_id": f"{task.id}\ud800", "task_status": "PENDING"}})

    hostile.script("id-surrogate", Script(submit=submit))
    daemon = await start_daemon(lane_delivery_limit=3)
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("id-surrogate", task_id))
    event = (await bus.wait_terminal([task_id], within=30))[task_id]
    submits = len(hostile.submits_of("id-surrogate"))
    print(
        f"submit answered with a task id holding a lone surrogate -> task {event['status']} "
        f"{(event['error'] or {}).get('category')}/{(event['error'] or {}).get('code')}, submits {submits}, "
        f"error/traceback log lines {len(crash_signs(logs.lines))}, "
        f"redeliveries {metric(daemon, 'imaged_redeliveries_total', queue='aliyun'):.0f}"
    )
    assert submits == 1
    assert event["status"] == "failed"
