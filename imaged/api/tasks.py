"""The task routes of ``/api/v1`` (the original service's create, status and result, plus list, cancel and models),
health and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import aio_pika
from aiohttp import web
from pydantic import ValidationError

from ..auth import Principal
from ..contract import Request, Status
from ..errors import InvalidRequest
from ..intake import Submitted, TaskIdTaken, describe_validation_error
from ..task import Task
from ..views import model_view, result_view, status_view, with_fresh_links
from .context import LIMITER_KEY, ApiDeps, authenticate, deps, load_task
from .http import ApiError, dumps, envelope, error, int_query, read_json_object
from .idempotency import attach, check_same_request
from .openapi import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, LIST_MAX_OFFSET, openapi_document

log = logging.getLogger(__name__)

#: how long handing a request to its lane may take before the caller hears 503
SUBMIT_TIMEOUT_S = 10.0
#: how often a synchronous create looks for its result
SYNC_POLL_S = 0.25


async def create_task(request: web.Request) -> web.Response:
    """Seed-compatible create: validated and recorded at once, then driven like any request; ``is_async: false``
    waits for the result. A ``task_id`` of another tenant's task is 409."""
    d = deps(request)
    who = await authenticate(request)
    wait_s = request.app[LIMITER_KEY].take(who.rate_key)
    if wait_s > 0:
        retry_after = str(max(1, math.ceil(wait_s)))
        raise ApiError(429, "too many tasks created: slow down", {"Retry-After": retry_after})
    data = await read_json_object(request)
    try:
        req = Request.model_validate(data)
    except ValidationError as exc:
        return error(422, describe_validation_error(exc))
    attached = await attach(request, d.tasks, who.tenant, data, req.task_id)
    task_id, existing = attached.task_id, attached.existing
    if existing is not None and not who.can_see(existing.owner):
        return error(409, f"task_id {task_id!r} is already in use: choose another one")
    if existing is None or existing.status is Status.PENDING:
        # A pending task is forwarded again: the earlier attempt may have stopped before its lane message.
        try:
            submitted = await submit(d, req, task_id, who, attached.fingerprint)
        except TaskIdTaken:
            return error(409, f"task_id {task_id!r} is already in use: choose another one")
        except InvalidRequest as exc:
            return error(422, exc.message)
        check_same_request(submitted.task, attached)
    if req.is_async:
        if existing is not None:
            return envelope(status_view(existing), "任务已存在 (task exists already)")
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务创建成功")
    task = await wait_for_terminal(d, task_id, d.settings.sync_wait_s)
    if task is None:
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务已创建，结果尚未就绪")
    view = await with_fresh_links(result_view(task), d.images.link if d.images else None)
    return envelope(view, "任务完成" if task.status is Status.COMPLETED else "任务失败")


async def submit(
    d: ApiDeps, req: Request, task_id: str, who: Principal, fingerprint: str | None
) -> Submitted:
    """Hand the request to intake in this process; a broker outage is 503 (the client may simply retry)."""
    try:
        async with asyncio.timeout(SUBMIT_TIMEOUT_S):
            return await d.submit(
                req,
                task_id=task_id,
                owner=who.tenant,
                correlation_id=None,
                reply_to=None,
                fingerprint=fingerprint,
            )
    except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("could not forward an HTTP request: %s", type(exc).__name__)
        raise ApiError(503, "the broker is not available; try again later", {"Retry-After": "5"}) from None


async def wait_for_terminal(d: ApiDeps, task_id: str, timeout_s: float) -> Task | None:
    """The task once it has finished, or None if it has not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = await d.tasks.get(task_id)
        if task is not None and task.terminal:
            return task
        await asyncio.sleep(SYNC_POLL_S)
    return None


async def list_tasks(request: web.Request) -> web.Response:
    d = deps(request)
    who = await authenticate(request)
    status = request.query.get("status") or None
    if status is not None and status not in {s.value for s in Status}:
        raise ApiError(400, f"status: expected one of {', '.join(s.value for s in Status)}")
    limit = int_query(request, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT)
    offset = int_query(request, "offset", 0, 0, LIST_MAX_OFFSET)
    tasks = await d.tasks.list(owner=who.tenant, status=status, limit=limit, skip=offset)
    total = await d.tasks.count(owner=who.tenant, status=status)
    following = offset + len(tasks)
    results = {
        "tasks": [status_view(task) for task in tasks],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": following if following < total and tasks else None,
    }
    return envelope(results, "获取任务列表成功")


async def get_status(request: web.Request) -> web.Response:
    task = await load_task(request, await authenticate(request))
    return envelope(status_view(task), "获取任务状态成功")


async def get_result(request: web.Request) -> web.Response:
    task = await load_task(request, await authenticate(request))
    images = deps(request).images
    return envelope(
        await with_fresh_links(result_view(task), images.link if images else None), "获取任务结果成功"
    )


async def cancel_task(request: web.Request) -> web.Response:
    task = await load_task(request, await authenticate(request))
    if task.terminal:
        return error(409, f"task {task.id} is already {task.status.value}: nothing to cancel")
    updated = await deps(request).cancel(task.id)
    if updated is None:  # deleted meanwhile
        raise ApiError(404, f"任务不存在 (task not found): {task.id}")
    return envelope(status_view(updated), "已请求取消任务 (cancel requested)", status=202)


async def list_models(request: web.Request) -> web.Response:
    await authenticate(request)
    d = deps(request)
    return envelope(model_view(d.catalog, d.providers), "获取模型列表成功")


async def openapi_json(request: web.Request) -> web.Response:
    models = tuple(deps(request).catalog.names())
    return web.json_response(openapi_document(models), dumps=dumps)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    report = await deps(request).readiness()
    return web.json_response(report, status=200 if report["ready"] else 503)
