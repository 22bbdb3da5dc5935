"""What the HTTP handlers may use, and who is calling.

The API depends on a few narrow things, not on the daemon: task reads and cancels, the catalog, a way to submit a
request (intake, in the same process), readiness and the metrics registry. :class:`ApiDeps` names them, so the
API can be tested and changed without the rest of imaged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..auth import ApiKeys, Authenticator, AuthError, Principal, RateLimiter
from ..catalog import Catalog, ModelSpec
from ..contract import Request, is_valid_task_id
from ..intake import Submitted
from ..settings import Settings
from ..storage import ImageStore
from ..store import TaskStore
from ..task import Task
from .http import ApiError

log = logging.getLogger(__name__)


class OpenAIParameters(Protocol):
    """``Provider.openai_parameters`` of the model's provider."""

    def __call__(
        self,
        spec: ModelSpec,
        *,
        prompt: str,
        n: int | None,
        size: tuple[int, int] | str | None,
        images: Sequence[str] = (),
        mask: str | None = None,
    ) -> dict[str, Any]: ...


class SubmitRequest(Protocol):
    """Hands a validated request to intake (see ``Intake.submit``)."""

    async def __call__(
        self,
        request: Request,
        *,
        task_id: str,
        owner: str | None,
        correlation_id: str | None,
        reply_to: str | None,
        fingerprint: str | None = None,
    ) -> Submitted: ...


@dataclass(frozen=True)
class ApiDeps:
    """Everything the HTTP API uses."""

    settings: Settings
    tasks: TaskStore
    catalog: Catalog
    #: providers with credentials here (their models are available)
    providers: Collection[str]
    submit: SubmitRequest
    cancel: Callable[[str], Awaitable[Task | None]]
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    registry: CollectorRegistry
    api_keys: ApiKeys | None = None
    #: where the images are (fresh download links, bytes for b64_json, uploads of /v1/images/edits)
    images: ImageStore | None = None
    #: signs the links to local image files this API serves (``/v1/files/...``); None: no such links
    link_key: bytes | None = None
    #: an OpenAI images request as a model's parameters (the provider's ``openai_parameters``)
    openai_parameters: OpenAIParameters | None = None
    #: a task's events as they are published (``EventHub.subscribe``); None: no event streams here
    subscribe: Callable[[str], AbstractAsyncContextManager[asyncio.Queue[dict[str, Any] | None]]] | None = (
        None
    )


DEPS_KEY: web.AppKey[ApiDeps] = web.AppKey("deps")
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator")
LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("create_limiter")
AUTH_FAILURES_KEY: web.AppKey[RateLimiter] = web.AppKey("auth_failures")


def deps(request: web.Request) -> ApiDeps:
    return request.app[DEPS_KEY]


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
    task = await deps(request).tasks.get(task_id) if is_valid_task_id(task_id) else None
    if task is None or not who.can_see(task.owner):
        raise ApiError(404, f"任务不存在 (task not found): {task_id[:64]}")
    return task
