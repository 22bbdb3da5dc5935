"""HTTP API (aiohttp, in the daemon's loop): the original service's task endpoints plus list, cancel, models,
health, metrics and the OpenAPI document.

Every response of ``/api/v1`` uses the original envelope ``{"success", "message", "results"}``; errors carry
``success: false`` and ``results: null`` and never a traceback. Task routes and ``/api/v1/models`` need a
credential (see :mod:`imaged.auth`) unless the API is open; a task of another tenant answers 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aio_pika
from aiohttp import web
from prometheus_client import Counter
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from .auth import (
    ApiKeys,
    Authenticator,
    AuthError,
    Principal,
    RateLimiter,
    is_loopback,
)
from .contract import Request, Status, is_valid_task_id, new_task_id
from .errors import ConfigError, InvalidRequest
from .intake import TaskIdTaken, describe_validation_error
from .openapi import LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, LIST_MAX_OFFSET, openapi_document
from .task import Task
from .views import model_view, result_view, status_view

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger(__name__)

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator")
LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("create_limiter")
AUTH_FAILURES_KEY: web.AppKey[RateLimiter] = web.AppKey("auth_failures")
HTTP_REQUESTS_KEY: web.AppKey[Counter] = web.AppKey("http_requests")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLISH_TIMEOUT_S = 10.0
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

OPEN_BANNER = """
************************************************************************************
*  OPEN MODE: no API keys and no JWT key are configured, so the HTTP API accepts   *
*  every caller and shows every task. It is bound to {host:<30}*
*  (loopback only). Configure IMAGED_API_KEYS, `imaged keys add` or IMAGED_JWT_*  *
*  before exposing it.                                                             *
************************************************************************************"""


# -- envelope -----------------------------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json)


def envelope(results: Any, message: str, *, success: bool = True, status: int = 200) -> web.Response:
    body = {"success": success, "message": message, "results": results}
    return web.json_response(body, status=status, dumps=dumps)


def error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    response = envelope(None, message, success=False, status=status)
    response.headers.update(headers or {})
    return response


class ApiError(Exception):
    """An answer other than success, in the envelope: raised by a handler, rendered by the middleware."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_DEFAULT_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in the envelope; nothing internal leaks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.message, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            cap = request.app[DAEMON_KEY].settings.max_request_bytes
            message = f"request body too large: the limit is {cap} bytes"
        else:
            message = _DEFAULT_MESSAGES.get(exc.status) or exc.reason or "error"
        kept = {k: v for k, v in exc.headers.items() if k in _KEPT_HEADERS}
        return error(exc.status, message, headers=kept)
    except PyMongoError as exc:
        log.warning("HTTP %s %s: database unavailable (%s)", request.method, request.path, type(exc).__name__)
        return error(503, "the database is not available; try again later", headers={"Retry-After": "5"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("HTTP handler failed: %s %s", request.method, request.path)
        return error(500, "internal error")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    request.app[HTTP_REQUESTS_KEY].labels(method, route, str(response.status)).inc()
    return response


# -- views ----------------------------------------------------------------------------------------------------------


# -- helpers --------------------------------------------------------------------------------------------------------


async def authenticate(request: web.Request) -> Principal:
    """The caller, or 401. A valid credential always works: the failure limit counts and slows down failures
    only (per client address), so a guesser behind the same proxy or NAT locks nobody out."""
    failures = request.app[AUTH_FAILURES_KEY]
    client = request.remote or "unknown"
    try:
        return await request.app[AUTH_KEY].authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        wait_s = failures.take(client)
        log.info(
            "HTTP authentication failed: %s (%s %s from %s)",
            exc,
            request.method,
            request.path,
            request.remote,
        )
        if wait_s > 0:
            retry_after = str(max(1, math.ceil(wait_s)))
            raise ApiError(
                429, "too many failed authentication attempts: slow down", {"Retry-After": retry_after}
            ) from None
        raise ApiError(401, str(exc), {"WWW-Authenticate": 'Bearer realm="imaged"'}) from None


async def load_task(request: web.Request, who: Principal) -> Task:
    """The task named in the path, if the caller may see it; anything else is 404 (never 403: ids do not leak)."""
    task_id = request.match_info["task_id"]
    task = await request.app[DAEMON_KEY].store.get(task_id) if is_valid_task_id(task_id) else None
    if task is None or not who.can_see(task.owner):
        raise ApiError(404, f"任务不存在 (task not found): {task_id[:64]}")
    return task


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}: expected an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}: expected an integer from {low} to {high}")
    return value


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    cap = request.app[DAEMON_KEY].settings.max_request_bytes
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, f"request body too large: the limit is {cap} bytes")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


# -- handlers -------------------------------------------------------------------------------------------------------


async def create_task(request: web.Request) -> web.Response:
    """Seed-compatible create: validated and recorded at once, then driven like any request; ``is_async: false``
    waits for the result. A ``task_id`` of another tenant's task is 409."""
    daemon = request.app[DAEMON_KEY]
    who = await authenticate(request)
    wait_s = request.app[LIMITER_KEY].take(who.rate_key)
    if wait_s > 0:
        retry_after = str(max(1, math.ceil(wait_s)))
        raise ApiError(429, "too many tasks created: slow down", {"Retry-After": retry_after})
    data = await _read_json_object(request)
    try:
        req = Request.model_validate(data)
    except ValidationError as exc:
        return error(422, describe_validation_error(exc))
    task_id = req.task_id or new_task_id()
    existing = await daemon.store.get(task_id) if req.task_id else None
    if existing is not None and not who.can_see(existing.owner):
        return error(409, f"task_id {task_id!r} is already in use: choose another one")
    if existing is None or existing.status is Status.PENDING:
        # A pending task is forwarded again: the earlier attempt may have stopped before its lane message.
        try:
            await _submit(daemon, req, task_id, who)
        except TaskIdTaken:
            return error(409, f"task_id {task_id!r} is already in use: choose another one")
        except InvalidRequest as exc:
            return error(422, exc.message)
    if req.is_async:
        if existing is not None:
            return envelope(status_view(existing), "任务已存在 (task exists already)")
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务创建成功")
    task = await daemon.wait_for_terminal(task_id, daemon.settings.sync_wait_s)
    if task is None:
        return envelope({"task_id": task_id, "status": Status.PENDING.value}, "任务已创建，结果尚未就绪")
    return envelope(result_view(task), "任务完成" if task.status is Status.COMPLETED else "任务失败")


async def _submit(daemon: Daemon, req: Request, task_id: str, who: Principal) -> None:
    """Hand the request to intake in this process; a broker outage is 503 (the client may simply retry)."""
    if daemon.intake is None:
        raise ApiError(503, "imaged is starting; try again shortly", {"Retry-After": "1"})
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await daemon.intake.submit(
                req, task_id=task_id, owner=who.tenant, correlation_id=None, reply_to=None
            )
    except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("could not forward an HTTP request: %s", type(exc).__name__)
        raise ApiError(503, "the broker is not available; try again later", {"Retry-After": "5"}) from None


async def list_tasks(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    who = await authenticate(request)
    status = request.query.get("status") or None
    if status is not None and status not in {s.value for s in Status}:
        raise ApiError(400, f"status: expected one of {', '.join(s.value for s in Status)}")
    limit = _int_query(request, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT)
    offset = _int_query(request, "offset", 0, 0, LIST_MAX_OFFSET)
    tasks = await daemon.store.list(owner=who.tenant, status=status, limit=limit, skip=offset)
    total = await daemon.store.count(owner=who.tenant, status=status)
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
    doc = await load_task(request, await authenticate(request))
    return envelope(status_view(doc), "获取任务状态成功")


async def get_result(request: web.Request) -> web.Response:
    doc = await load_task(request, await authenticate(request))
    return envelope(result_view(doc), "获取任务结果成功")


async def cancel_task(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    task = await load_task(request, await authenticate(request))
    if task.terminal:
        return error(409, f"task {task.id} is already {task.status.value}: nothing to cancel")
    updated = await daemon.cancel(task.id)
    if updated is None:  # deleted meanwhile
        raise ApiError(404, f"任务不存在 (task not found): {task.id}")
    return envelope(status_view(updated), "已请求取消任务 (cancel requested)", status=202)


async def list_models(request: web.Request) -> web.Response:
    await authenticate(request)
    daemon = request.app[DAEMON_KEY]
    return envelope(model_view(daemon.catalog, daemon.providers), "获取模型列表成功")


async def openapi_json(request: web.Request) -> web.Response:
    models = tuple(sorted(request.app[DAEMON_KEY].catalog.models))
    return web.json_response(openapi_document(models), dumps=dumps)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    report = await request.app[DAEMON_KEY].readiness()
    return web.json_response(report, status=200 if report["ready"] else 503)


# -- application ----------------------------------------------------------------------------------------------------


async def _start_auth(app: web.Application) -> None:
    """Decide the authentication mode before the server binds; open mode only on loopback."""
    daemon = app[DAEMON_KEY]
    auth = app[AUTH_KEY]
    if auth.keys is not None:
        await auth.keys.ensure_indexes()
    await auth.start()
    host = daemon.settings.http_host
    if auth.open:
        if not is_loopback(host):
            raise ConfigError(
                f"IMAGED_HTTP_HOST={host} is not a loopback address, and no API keys or JWT key are configured: "
                "refusing to serve an open API there. Configure IMAGED_API_KEYS, `imaged keys add` or "
                "IMAGED_JWT_SECRET / IMAGED_JWT_PUBLIC_KEY, or bind to 127.0.0.1."
            )
        log.warning(OPEN_BANNER.format(host=host))
    else:
        log.info("HTTP authentication %s", auth.describe())


def create_app(daemon: Daemon) -> web.Application:
    """The HTTP application of a daemon. Raises ConfigError for an unusable authentication setup."""
    s = daemon.settings
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware], client_max_size=s.max_request_bytes
    )
    app[DAEMON_KEY] = daemon
    app[AUTH_KEY] = Authenticator(s, ApiKeys(daemon.store.db["api_keys"]))
    app[LIMITER_KEY] = RateLimiter(s.create_rate_per_s, s.create_burst)
    app[AUTH_FAILURES_KEY] = RateLimiter(s.auth_failures_per_s, s.auth_failures_burst)
    app[HTTP_REQUESTS_KEY] = Counter(
        "imaged_http_requests_total",
        "HTTP requests by method, route and status code",
        ["method", "route", "code"],
        registry=daemon.metrics.registry,
    )
    app.on_startup.append(_start_auth)
    for path, method, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/metrics", make_aiohttp_handler(daemon.metrics.registry), allow_head=False)
    return app


ROUTES: list[tuple[str, str, Handler]] = [
    ("/api/v1/tasks/", "POST", create_task),
    ("/api/v1/tasks", "POST", create_task),
    ("/api/v1/tasks", "GET", list_tasks),
    ("/api/v1/tasks/", "GET", list_tasks),
    ("/api/v1/tasks/{task_id}/status", "GET", get_status),
    ("/api/v1/tasks/{task_id}/result", "GET", get_result),
    ("/api/v1/tasks/{task_id}/cancel", "POST", cancel_task),
    ("/api/v1/models", "GET", list_models),
    ("/api/v1/openapi.json", "GET", openapi_json),
    ("/health/live", "GET", live),
    ("/health/ready", "GET", ready),
]
