"""``GET /api/v1/tasks/{id}/events``: a task's events as Server-Sent Events, read as a browser's EventSource does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from imaged.api import stream
from imaged.daemon import Daemon
from imaged.simulator import Simulator

from .conftest import Credentials
from .support import call, seed_json

pytestmark = pytest.mark.timeout(60)


async def read_stream(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, str, list[dict[str, Any]]]:
    """Status, content type and every event of the stream, until the server ends it."""
    events: list[dict[str, Any]] = []
    async with http.get(url, headers={"Accept": "text/event-stream", **headers}) as resp:
        if resp.status != 200:
            return resp.status, resp.content_type, events
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    events.append(
                        {"id": fields.get("id"), "event": fields.get("event"), **json.loads(fields["data"])}
                    )
                fields = {}
            elif not line.startswith(":"):  # a comment (ping) otherwise
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        return resp.status, resp.content_type, events


async def test_a_stream_shows_the_story_live_then_resumes_after_last_event_id(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    base = f"{api_daemon.http_url}/api/v1/tasks"
    alice = creds.headers("alice")
    created = await call(http, "POST", base, headers=alice, json_body=seed_json("wanx2.1-t2i-turbo"))
    assert created.status in (200, 201, 202), created.text
    task_id = created.body["results"]["task_id"]

    status, content_type, events = await read_stream(http, f"{base}/{task_id}/events", alice)
    assert status == 200 and content_type == "text/event-stream"
    statuses = [e["status"] for e in events if e["type"] != "task.progress"]
    assert statuses[0] == "pending" and "processing" in statuses and statuses[-1] == "completed"
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})  # each once, in order
    assert all(
        e["id"] == e["event_id"] == f"{task_id}:{e['seq']}" and e["event"] == e["type"] for e in events
    )
    assert events[-1]["result"]["images"]

    # Reconnecting after the first event gives the rest, as stored: the terminal event exactly as published.
    first = events[0]["id"]
    _, _, rest = await read_stream(http, f"{base}/{task_id}/events", {**alice, "Last-Event-ID": first})
    assert rest and rest[0]["seq"] > events[0]["seq"] and rest[-1] == events[-1]
    _, _, nothing = await read_stream(
        http, f"{base}/{task_id}/events", {**alice, "Last-Event-ID": events[-1]["id"]}
    )
    assert nothing == []


async def test_another_tenant_gets_404_and_nobody_unauthenticated(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    base = f"{api_daemon.http_url}/api/v1/tasks"
    created = await call(
        http, "POST", base, headers=creds.headers("alice"), json_body=seed_json("wanx2.1-t2i-turbo")
    )
    task_id = created.body["results"]["task_id"]
    status, _, events = await read_stream(http, f"{base}/{task_id}/events", creds.headers("bob"))
    assert status == 404 and events == []
    status, _, _ = await read_stream(http, f"{base}/{task_id}/events", {})
    assert status == 401


async def test_a_client_that_leaves_releases_its_stream(
    api_daemon: Daemon,
    creds: Credentials,
    http: aiohttp.ClientSession,
    simulator: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream, "PING_S", 0.2)  # the pause after which a stream checks on its client
    async with http.post(f"{simulator.url}/_sim/config", json={"task_seconds": 30}) as resp:
        assert resp.status == 200
    base = f"{api_daemon.http_url}/api/v1/tasks"
    alice = creds.headers("alice")
    created = await call(http, "POST", base, headers=alice, json_body=seed_json("wanx2.1-t2i-turbo"))
    task_id = created.body["results"]["task_id"]
    assert api_daemon._runner is not None
    open_streams = api_daemon._runner.app[stream.STREAMS_KEY]
    async with http.get(f"{base}/{task_id}/events", headers=alice) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\r\n\r\n")  # the separator aiohttp-sse writes
        assert b"task.pending" in first
        assert open_streams == {"alice": 1} and task_id in api_daemon.event_hub.streams
        resp.close()  # the client goes away mid-task
    async with asyncio.timeout(10):
        while True:  # released within a few pauses (state to poll: nothing here signals it)
            if not open_streams and not api_daemon.event_hub.streams:
                break
            await asyncio.sleep(0.1)
