"""The HTTP API's plumbing: the original envelope, errors that render in it, request parsing, two middlewares.

Every response of ``/api/v1`` uses the envelope ``{"success", "message", "results"}``; errors carry
``success: false`` and ``results: null`` and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_REQUESTS_KEY: web.AppKey[Counter] = web.AppKey("http_requests")
MAX_BODY_KEY: web.AppKey[int] = web.AppKey("max_request_bytes")

_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DEFAULT_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
}


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


#: routes of the OpenAI-compatible API: their errors take OpenAI's shape, not the envelope
OPENAI_PREFIX = "/v1/"

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    retry: bool | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the OpenAI shape, ``{"error": {"message", "type", "param", "code"}}``. ``x-should-retry`` tells
    the OpenAI SDK whether to retry (it otherwise retries 408, 409, 429 and 5xx): never where a retry cannot help."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    response = web.json_response(body, status=status, dumps=dumps)
    response.headers.update(headers or {})
    should_retry = retry if retry is not None else (status in (408, 429) or status >= 500)
    response.headers["x-should-retry"] = "true" if should_retry else "false"
    return response


def error_for(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An error in the shape of the route's API: OpenAI's under ``/v1/``, the envelope elsewhere."""
    if request.path.startswith(OPENAI_PREFIX):
        return openai_error(status, message, headers=headers)
    return error(status, message, headers=headers)


class ApiError(Exception):
    """An answer other than success, in the envelope: raised by a handler, rendered by the middleware."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in the envelope; nothing internal leaks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_for(request, exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413 and MAX_BODY_KEY in request.app:
            message = f"request body too large: the limit is {request.app[MAX_BODY_KEY]} bytes"
        else:
            message = _DEFAULT_MESSAGES.get(exc.status) or exc.reason or "error"
        kept = {k: v for k, v in exc.headers.items() if k in _KEPT_HEADERS}
        return error_for(request, exc.status, message, kept)
    except PyMongoError as exc:
        log.warning("HTTP %s %s: database unavailable (%s)", request.method, request.path, type(exc).__name__)
        return error_for(request, 503, "the database is not available; try again later", {"Retry-After": "5"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("HTTP handler failed: %s %s", request.method, request.path)
        return error_for(request, 500, "internal error")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    request.app[HTTP_REQUESTS_KEY].labels(method, route, str(response.status)).inc()
    return response


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError (400 not JSON, 413 too large)."""
    cap = request.app.get(MAX_BODY_KEY, 0)
    if cap and request.content_length is not None and request.content_length > cap:
        raise ApiError(413, f"request body too large: the limit is {cap} bytes")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
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
