"""Which task a create request belongs to, so that a client's retry never pays twice.

- ``Idempotency-Key`` (any POST that creates a task, native or OpenAI): the same key from the same tenant names the
  same task (its id is derived from tenant and key); the key reused with a different request body is 409. A body
  that names its own ``task_id`` has its idempotency key already: that id wins, and the header only adds the
  check of the body.
- Without a key, a retry the client itself marks (``X-Stainless-Retry-Count`` >= 1: the OpenAI SDK and every
  client generated like it number their retries) of the same body from the same tenant, within
  :data:`RETRY_WINDOW`, finds the task of the first attempt (the answer to it may simply have been lost).

Every task created over HTTP records the fingerprint of its request (tenant, route and body) for both checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from ..contract import new_task_id, utcnow
from ..store import TaskStore
from ..task import Task
from .http import ApiError

IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_COUNT_HEADER = "X-Stainless-Retry-Count"
#: how long after a request a client's marked retry of it is taken for the same request (the SDK gives up
#: after 10 minutes)
RETRY_WINDOW = timedelta(minutes=15)
KEY_MAX_CHARS = 255


def fingerprint(tenant: str | None, route: str, body: Any) -> str:
    """The same request gives the same fingerprint: tenant, route and body (keys in any order)."""
    canonical = json.dumps([tenant, route, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Attachment:
    """The task id a create request uses, the fingerprint to record, and the task if it exists already."""

    task_id: str
    fingerprint: str
    existing: Task | None


async def attach(
    request: web.Request, tasks: TaskStore, tenant: str | None, body: Any, task_id: str | None
) -> Attachment:
    """The task a create request belongs to (see the module docstring); ``task_id`` is one the body named."""
    fp = fingerprint(tenant, request.path.rstrip("/"), body)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        if not 0 < len(key) <= KEY_MAX_CHARS or not key.isprintable():
            raise ApiError(400, f"{IDEMPOTENCY_HEADER}: 1 to {KEY_MAX_CHARS} printable characters")
        derived = hashlib.sha256(f"{tenant or ''}\0{key}".encode()).hexdigest()[:24]
        chosen = task_id or derived
        existing = await tasks.get(chosen)
        if existing is not None and existing.fingerprint not in (None, fp) and existing.owner == tenant:
            raise ApiError(409, f"{IDEMPOTENCY_HEADER} {key[:64]!r} was used before with a different request")
        return Attachment(chosen, fp, existing)
    if task_id is None and _is_retry(request):
        earlier = await tasks.latest_with_fingerprint(fp, since=utcnow() - RETRY_WINDOW)
        if earlier is not None and earlier.owner == tenant:
            return Attachment(earlier.id, fp, earlier)
    chosen = task_id or new_task_id()
    return Attachment(chosen, fp, await tasks.get(chosen) if task_id else None)


def check_same_request(task: Task, attachment: Attachment) -> None:
    """After a create: two requests raced for one key, and this one lost to a different body: 409."""
    if task.fingerprint not in (None, attachment.fingerprint):
        raise ApiError(
            409,
            f"task {task.id} belongs to a different request: its task_id or {IDEMPOTENCY_HEADER} was used with "
            "another body",
        )


def _is_retry(request: web.Request) -> bool:
    count = request.headers.get(RETRY_COUNT_HEADER, "0").strip()
    return count.isdigit() and int(count) > 0
