"""The HTTP application: routes, middlewares, authentication, metrics. It runs in the daemon's event loop."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import Counter
from prometheus_client.aiohttp import make_aiohttp_handler

from ..auth import Authenticator, RateLimiter, is_loopback
from ..errors import ConfigError
from . import links, openai, stream, tasks
from .context import AUTH_FAILURES_KEY, AUTH_KEY, DEPS_KEY, LIMITER_KEY, ApiDeps
from .http import HTTP_REQUESTS_KEY, MAX_BODY_KEY, Handler, error_middleware, metrics_middleware
from .links import FILE_ROUTE

log = logging.getLogger(__name__)

OPEN_BANNER = """
************************************************************************************
*  OPEN MODE: no API keys and no JWT key are configured, so the HTTP API accepts   *
*  every caller and shows every task. It is bound to {host:<30}*
*  (loopback only). Configure IMAGED_API_KEYS, `imaged keys add` or IMAGED_JWT_*  *
*  before exposing it.                                                             *
************************************************************************************"""

ROUTES: list[tuple[str, str, Handler]] = [
    ("/api/v1/tasks/", "POST", tasks.create_task),
    ("/api/v1/tasks", "POST", tasks.create_task),
    ("/api/v1/tasks", "GET", tasks.list_tasks),
    ("/api/v1/tasks/", "GET", tasks.list_tasks),
    ("/api/v1/tasks/{task_id}/status", "GET", tasks.get_status),
    ("/api/v1/tasks/{task_id}/result", "GET", tasks.get_result),
    ("/api/v1/tasks/{task_id}/cancel", "POST", tasks.cancel_task),
    ("/api/v1/tasks/{task_id}/events", "GET", stream.task_events),
    ("/api/v1/models", "GET", tasks.list_models),
    ("/api/v1/openapi.json", "GET", tasks.openapi_json),
    ("/v1/images/generations", "POST", openai.generations),
    ("/v1/images/edits", "POST", openai.edits),
    ("/v1/models", "GET", openai.models),
    (FILE_ROUTE, "GET", links.serve_file),
    ("/health/live", "GET", tasks.live),
    ("/health/ready", "GET", tasks.ready),
]


async def _start_auth(app: web.Application) -> None:
    """Decide the authentication mode before the server binds; open mode only on loopback."""
    auth = app[AUTH_KEY]
    if auth.keys is not None:
        await auth.keys.ensure_indexes()
    await auth.start()
    host = app[DEPS_KEY].settings.http_host
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


def create_app(deps: ApiDeps) -> web.Application:
    """The HTTP application. Raises ConfigError for an unusable authentication setup."""
    s = deps.settings
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware], client_max_size=s.max_request_bytes
    )
    app[DEPS_KEY] = deps
    app[MAX_BODY_KEY] = s.max_request_bytes
    app[AUTH_KEY] = Authenticator(s, deps.api_keys)
    app[LIMITER_KEY] = RateLimiter(s.create_rate_per_s, s.create_burst)
    app[AUTH_FAILURES_KEY] = RateLimiter(s.auth_failures_per_s, s.auth_failures_burst)
    app[stream.STREAMS_KEY] = {}
    app[HTTP_REQUESTS_KEY] = Counter(
        "imaged_http_requests_total",
        "HTTP requests by method, route and status code",
        ["method", "route", "code"],
        registry=deps.registry,
    )
    app.on_startup.append(_start_auth)
    for path, method, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/metrics", make_aiohttp_handler(deps.registry), allow_head=False)
    return app
