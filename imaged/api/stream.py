"""``GET /api/v1/tasks/{task_id}/events``: a task's events as Server-Sent Events.

The task's story so far (each status change it stored, with the event id it had; the terminal event exactly as it
was published), then its events live until the terminal one. ``Last-Event-ID`` (``<task_id>:<seq>``, the ``id``
of every event) resumes after that event; progress events are live only (they are not stored). Same tenant rules
as the task's other routes; a ping comment every 15 seconds keeps proxies from closing an idle stream. A stream
ends after an hour (the client reconnects and resumes); a tenant may hold 100 streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from pymongo.errors import PyMongoError

from ..contract import Status
from ..event_hub import EventsUnavailable
from ..task import Task
from .context import authenticate, deps, load_task
from .http import ApiError, dumps

PING_S = 15.0
#: a stream ends after this long (the client reconnects with its Last-Event-ID); a task lives a day at most
STREAM_MAX_S = 3600.0
MAX_STREAMS_PER_TENANT = 100
#: open streams per tenant
STREAMS_KEY: web.AppKey[dict[str, int]] = web.AppKey("event_streams", dict)
TERMINAL_STATUSES = frozenset(s.value for s in Status if s.terminal)


def _seq_of(event_id: str | None, task_id: str) -> int:
    """The sequence number in a ``Last-Event-ID`` of this task (0: from the start)."""
    if not event_id:
        return 0
    owner, _, seq = event_id.rpartition(":")
    return int(seq) if owner == task_id and seq.isdigit() else 0


def stored_events(task: Task) -> list[dict[str, Any]]:
    """The events a task's stored story tells: one per recorded status change, the terminal one as published."""
    events: list[dict[str, Any]] = []
    for entry in task.history:
        seq, status = entry.get("seq"), entry.get("status")
        if not isinstance(seq, int) or status not in {s.value for s in Status} or Status(status).terminal:
            continue
        at = entry.get("at")
        events.append(
            {
                "event_id": f"{task.id}:{seq}",
                "type": f"task.{status}",
                "seq": seq,
                "occurred_at": at.isoformat() if isinstance(at, datetime) else at,
                "task_id": task.id,
                "status": status,
                "model": task.model,
                "provider": task.provider,
                "correlation_id": task.correlation_id,
                "metadata": task.metadata,
                "progress": 0.0,
            }
        )
    if task.terminal_event is not None:
        events.append(task.terminal_event)
    return events


async def task_events(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    who = await authenticate(request)
    task = await load_task(request, who)
    if d.subscribe is None:
        raise ApiError(503, "event streams are not available here")
    last = _seq_of(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"), task.id)
    open_streams, tenant = request.app[STREAMS_KEY], who.tenant or ""
    if open_streams.get(tenant, 0) >= MAX_STREAMS_PER_TENANT:
        raise ApiError(
            429, f"too many open event streams (at most {MAX_STREAMS_PER_TENANT})", {"Retry-After": "15"}
        )
    open_streams[tenant] = open_streams.get(tenant, 0) + 1
    try:
        async with d.subscribe(task.id) as live, sse_response(request, ping_interval=PING_S) as stream:
            with contextlib.suppress(ConnectionResetError):  # the client left while an event was on its way
                await _follow(request, task, live, stream, last)
    except EventsUnavailable as exc:
        raise ApiError(503, f"event streams are not available now: {exc}", {"Retry-After": "5"}) from None
    finally:
        open_streams[tenant] -= 1
        if not open_streams[tenant]:
            del open_streams[tenant]
    return stream


async def _follow(
    request: web.Request,
    task: Task,
    live: asyncio.Queue[dict[str, Any] | None],
    stream: EventSourceResponse,
    last: int,
) -> None:
    """Send the story, then live events until the terminal one, the client leaves or the stream's time is up.

    Listening starts before the story is read, so an event in between is heard twice at worst, and sent once.
    Every ``PING_S`` without an event the stored story is read again: it covers what the live feed may have
    missed (the hub reconnecting to the broker), and a client that left is noticed.
    """
    store = deps(request).tasks
    current = await store.get(task.id) or task
    ends_at = asyncio.get_running_loop().time() + STREAM_MAX_S
    for event in stored_events(current):
        last = await _send(stream, event, last)
    while not current.terminal and asyncio.get_running_loop().time() < ends_at:
        try:
            heard = await asyncio.wait_for(live.get(), PING_S)
        except TimeoutError:
            if not stream.is_connected() or request.transport is None or request.transport.is_closing():
                return
            try:
                current = await store.get(task.id) or current
            except PyMongoError:  # the database is away: the live feed goes on; read again at the next pause
                continue
            for event in stored_events(current):
                last = await _send(stream, event, last)
            continue
        if heard is None:
            return  # fell behind: the client reconnects with its Last-Event-ID
        last = await _send(stream, heard, last)
        if heard.get("status") in TERMINAL_STATUSES:
            return


async def _send(stream: EventSourceResponse, event: dict[str, Any], last: int) -> int:
    seq = event.get("seq")
    if not isinstance(seq, int) or seq <= last:
        return last
    await stream.send(dumps(event), id=str(event.get("event_id")), event=str(event.get("type")))
    return seq
