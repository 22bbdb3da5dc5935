"""``GET /api/v1/tasks/{task_id}/events``: a task's events as Server-Sent Events.

The task's story so far (each status change it stored, with the event id it had; the terminal event exactly as it
was published), then its events live until the terminal one. ``Last-Event-ID`` (``<task_id>:<seq>``, the ``id``
of every event) resumes after that event; progress events are live only (they are not stored). Same tenant rules
as the task's other routes; a ping comment every 15 seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from ..contract import Status
from ..task import Task
from .context import authenticate, deps, load_task
from .http import ApiError, dumps

PING_S = 15.0
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
    task = await load_task(request, await authenticate(request))
    if d.subscribe is None:
        raise ApiError(503, "event streams are not available here")
    last = _seq_of(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"), task.id)
    # Listen first, then read the story: an event in between is heard twice at worst, and sent once.
    async with d.subscribe(task.id) as live, sse_response(request, ping_interval=PING_S) as stream:
        current = await d.tasks.get(task.id) or task
        for event in stored_events(current):
            last = await _send(stream, event, last)
        while not current.terminal:
            heard = await live.get()
            if heard is None:
                break  # fell behind: the client reconnects with its Last-Event-ID
            last = await _send(stream, heard, last)
            if heard.get("status") in TERMINAL_STATUSES:
                break
    return stream


async def _send(stream: Any, event: dict[str, Any], last: int) -> int:
    seq = event.get("seq")
    if not isinstance(seq, int) or seq <= last:
        return last
    await stream.send(dumps(event), id=str(event.get("event_id")), event=str(event.get("type")))
    return seq
