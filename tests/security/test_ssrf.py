"""Scenario 3: image URLs in provider replies cannot make the daemon reach internal addresses.

``download_allowed_networks`` stays empty (the default: public addresses only). An "internal" server listens on
loopback and counts every request; each SUCCEEDED reply names it (or cloud metadata) in a different disguise. Every
task fails with ``download_failed`` at once, the internal server sees nothing, and no refusal is retried.
"""

from __future__ import annotations

import json
import secrets

import pytest
from aiohttp import web

from ..support import Bus
from .conftest import StartDaemon
from .hostile import HostileDashScope, HostileTask, InternalServer, Script, succeeded
from .support import LeakLedger, LogCapture, daemon_secrets, request_bytes, stored_doc

pytestmark = pytest.mark.timeout(120)

RETRY_LINES = ("retrying image download", "retried image download")


def hostile_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/x",
        f"http://localhost:{port}/x",
        f"http://0.0.0.0:{port}/x",
        f"http://[::ffff:127.0.0.1]:{port}/x",
        f"http://user@127.0.0.1:{port}/x",
        f"http://127.1:{port}/x",
        f"http://2130706433:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/x",
    ]


def reply_with(url: str) -> Script:
    async def poll(task: HostileTask) -> web.StreamResponse:
        return succeeded(task.id, [url])

    return Script(poll=poll)


def refusal_code(message: str) -> str:
    """The download error's code, as its message names it (the task's error code is ``no_images``)."""
    if "user info" in message:
        return "userinfo"
    if "refused" in message:
        return "blocked_address"
    return "?"


async def test_result_urls_never_reach_internal_addresses(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    internal: InternalServer,
    logs: LogCapture,
    ledger: LeakLedger,
) -> None:
    daemon = await start_daemon()  # download_allowed_networks: empty, the default
    assert daemon.settings.download_allowed_networks == []
    urls = hostile_urls(internal.port)
    ids = {url: secrets.token_hex(12) for url in urls}
    for number, url in enumerate(urls):
        hostile.script(f"ssrf-{number}", reply_with(url))
        await bus.publish(request_bytes(f"ssrf-{number}", ids[url]))
    events = await bus.wait_terminal(ids.values(), within=30)

    lines = []
    for url, task_id in ids.items():
        event = events[task_id]
        error = event["error"] or {}
        assert event["status"] == "failed", (url, event)
        assert (error["category"], error["code"]) == ("download_failed", "no_images"), (url, error)
        assert "refused" in error["message"], (url, error)
        stored = await stored_doc(daemon, task_id)
        seconds = (stored["finished_at"] - stored["created_at"]).total_seconds()
        assert seconds < 5, (url, seconds)  # a retried download would back off for seconds
        assert [t.prompt for t in hostile.submits].count(f"ssrf-{urls.index(url)}") == 1
        lines.append(
            f"SSRF {url} -> refused {refusal_code(error['message'])} in {seconds:.2f}s "
            f"({error['message'].split(': ', 1)[1].split(': refused')[0]}), internal server hits {len(internal.hits)}"
        )
    retried = [line for line in logs.lines if any(fragment in line for fragment in RETRY_LINES)]
    assert internal.hits == []
    assert retried == []
    assert "'127.0.0.1'" in events[ids[urls[0]]]["error"]["message"]
    assert "user info" in events[ids[urls[4]]]["error"]["message"]
    texts = {"events": json.dumps([bus.events[t] for t in ids.values()]), "logs": logs.text}
    assert ledger.check("3 SSRF", daemon_secrets(daemon), texts) == 0
    for line in lines:
        print(line)
    print(f"SSRF: {len(urls)} hostile URLs -> {len(urls)} tasks failed download_failed, retry log lines 0")


async def test_a_redirect_to_an_internal_address_is_not_followed(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope
) -> None:
    """The image host itself is allowed (127.0.0.1/32, e.g. an operator's mirror) and answers with a redirect to an
    internal server on another loopback address the policy does not allow."""
    internal = InternalServer(hosts=("127.0.0.2",))
    await internal.start()
    try:
        daemon = await start_daemon(download_allowed_networks=["127.0.0.1/32"])
        target = f"http://127.0.0.2:{internal.port}/latest/meta-data/"
        url = hostile.redirect_url("meta", target)
        hostile.script("redirect", reply_with(url))
        task_id = secrets.token_hex(12)
        await bus.publish(request_bytes("redirect", task_id))
        event = (await bus.wait_terminal([task_id], within=20))[task_id]
        assert event["status"] == "failed" and event["error"]["category"] == "download_failed"
        assert "HTTP 302" in event["error"]["message"]
        stored = await stored_doc(daemon, task_id)
        seconds = (stored["finished_at"] - stored["created_at"]).total_seconds()
        assert internal.hits == []
        assert hostile.image_hits["meta"] == 1  # asked once, not retried
        assert seconds < 5
        print(
            f"SSRF redirect {url} -> 302 {target} -> refused (HTTP 302, not followed, not retried) in "
            f"{seconds:.2f}s, internal server hits {len(internal.hits)}"
        )
    finally:
        await internal.stop()
