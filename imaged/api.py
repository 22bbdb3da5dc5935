"""HTTP API (aiohttp, in the daemon's loop): the original service's task endpoints, health and metrics.

Every response uses the original envelope ``{"success", "message", "results"}``; errors never carry a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import ValidationError

from .contract import Request, Status, new_task_id
from .intake import describe_validation_error
from .store import TaskDoc

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def envelope(results: Any, message: str, *, success: bool = True, status: int = 200) -> web.Response:
    body = {"success": success, "message": message, "results": results}
    return web.json_response(
        body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False, default=_json)
    )


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def error(status: int, message: str) -> web.Response:
    return envelope(None, message, success=False, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in the envelope; nothing internal leaks."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason or "error")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("HTTP handler failed: %s %s", request.method, request.path)
        return error(500, "internal error")


def status_view(doc: TaskDoc) -> dict[str, Any]:
    return {
        "task_id": doc["_id"],
        "status": doc["status"],
        "progress": doc.get("progress", 0.0),
        "model": doc.get("model"),
        "provider": doc.get("provider"),
        "created_at": doc.get("created_at"),
        "updated_at": doc.get("updated_at"),
        "error": doc.get("error"),
    }


def result_view(doc: TaskDoc) -> dict[str, Any]:
    return {
        "task_id": doc["_id"],
        "status": doc["status"],
        "result": doc.get("result"),
        "error": doc.get("error"),
    }


async def _load_task(request: web.Request) -> TaskDoc:
    daemon = request.app[DAEMON_KEY]
    task_id = request.match_info["task_id"]
    doc = await daemon.store.get(task_id)
    if doc is None:
        raise web.HTTPNotFound(reason=f"任务不存在 (task not found): {task_id}")
    return doc


async def get_status(request: web.Request) -> web.Response:
    doc = await _load_task(request)
    return envelope(status_view(doc), "获取任务状态成功")


async def get_result(request: web.Request) -> web.Response:
    doc = await _load_task(request)
    return envelope(result_view(doc), "获取任务结果成功")


async def create_task(request: web.Request) -> web.Response:
    """Seed-compatible create: the request goes through the queue like any other; ``is_async: false`` waits."""
    daemon = request.app[DAEMON_KEY]
    raw = await request.read()
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("request body must be a JSON object")
        req = Request.model_validate(data)
    except ValidationError as exc:
        return error(422, describe_validation_error(exc))
    except ValueError as exc:
        return error(400, f"request body is not valid JSON: {exc}")
    task_id = req.task_id or new_task_id()
    data["task_id"] = task_id
    await daemon.broker.publish_to_queue(
        daemon.broker.topology.requests, json.dumps(data, ensure_ascii=False).encode(), message_id=task_id
    )
    if req.is_async:
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务创建成功")
    doc = await daemon.wait_for_terminal(task_id, daemon.settings.sync_wait_s)
    if doc is None:
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务已创建，结果尚未就绪")
    return envelope(result_view(doc), "任务完成" if doc["status"] == Status.COMPLETED.value else "任务失败")


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    report = await request.app[DAEMON_KEY].readiness()
    return web.json_response(report, status=200 if report["ready"] else 503)


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=daemon.settings.max_request_bytes)
    app[DAEMON_KEY] = daemon
    app.router.add_post("/api/v1/tasks/", create_task)
    app.router.add_post("/api/v1/tasks", create_task)
    app.router.add_get("/api/v1/tasks/{task_id}/status", get_status)
    app.router.add_get("/api/v1/tasks/{task_id}/result", get_result)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", make_aiohttp_handler(daemon.metrics.registry))
    return app
