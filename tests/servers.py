"""Servers on 127.0.0.1 for tests: small aiohttp apps scripted to answer (or to misbehave) as a test needs, the
provider emulator started and stopped around a block, and a port nobody listens on.

:class:`WebhookReceiver` is a webhook endpoint that checks every delivery with the Standard Webhooks reference
library (which imaged does not use itself) and answers as scripted.

A fault server is a list of routes whose handlers are made by :func:`answer` (the same reply to every request:
an error envelope, HTML where JSON belongs, a truncated body, a Retry-After header) or are :func:`hang` (no reply
at all, until the server stops: a client's timeout must fire first).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook as ReferenceVerifier
from standardwebhooks import WebhookVerificationError

from imaged.simulator import Simulator, SimulatorConfig

__all__ = [
    "WEBHOOK_SECRET",
    "Handler",
    "Route",
    "Served",
    "WebhookReceiver",
    "answer",
    "emulator",
    "free_port",
    "hang",
    "serve",
    "webhook_receiver",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]  # method, path, handler
RunnerFactory = Callable[[web.Application], web.AppRunner]

_RELEASED = web.AppKey("released", asyncio.Event)


@dataclass(frozen=True)
class Served:
    """Where a server of :func:`serve` listens."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _plain_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None)


@asynccontextmanager
async def serve(
    app: web.Application | Sequence[Route], runner: RunnerFactory = _plain_runner
) -> AsyncIterator[Served]:
    """Serve ``app`` (or an app of ``routes``) on a free loopback port for the block.

    ``runner`` makes the app's runner (a plain :class:`web.AppRunner` unless the runner is under test). On the way
    out, requests held by :func:`hang` are released first, so the server stops at once.
    """
    if not isinstance(app, web.Application):
        routes, app = app, web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
    released = asyncio.Event()
    app[_RELEASED] = released
    app_runner = runner(app)
    await app_runner.setup()
    try:
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        yield Served(int(app_runner.addresses[0][1]))
    finally:
        released.set()
        await app_runner.cleanup()


def answer(
    status: int = 200,
    *,
    json: Any = None,
    text: str | None = None,
    body: bytes | None = None,
    content_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Handler:
    """A handler giving every request the same answer: ``json`` as a JSON body, else ``text`` or raw ``body``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if json is not None:
            return web.json_response(json, status=status, headers=headers)
        return web.Response(status=status, text=text, body=body, content_type=content_type, headers=headers)

    return handler


async def hang(request: web.Request) -> web.StreamResponse:
    """A handler that never answers in time: it waits until the server of :func:`serve` stops."""
    await request.app[_RELEASED].wait()
    return web.Response(status=503, text="released")


@asynccontextmanager
async def emulator(config: SimulatorConfig | None = None) -> AsyncIterator[Simulator]:
    """The provider emulator, started for the block and stopped after it."""
    sim = Simulator(config)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def free_port() -> int:
    """A loopback port free when asked: nothing listens there until someone binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: the signing secret of the tests' webhooks (IMAGED_WEBHOOK_SECRET)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class WebhookReceiver:
    """A webhook endpoint that answers ``statuses`` in turn (then 200) and verifies every delivery."""

    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    unverified: int = 0
    url: str = ""
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = ReferenceVerifier(WEBHOOK_SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.unverified += 1
            return web.Response(status=400)
        status = self.statuses.pop(0) if self.statuses else 200
        async with self._arrived:
            self.received.append({"id": request.headers["webhook-id"], "event": event, "answered": status})
            self._arrived.notify_all()
        return web.Response(status=status, text="not now" if status >= 300 else "ok")

    async def wait_for(self, count: int, within: float) -> list[dict[str, Any]]:
        """The deliveries received, once there are ``count`` (TimeoutError after ``within`` seconds)."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    """A :class:`WebhookReceiver` on a free loopback port for the block, at ``<url>/hook`` (and any path below)."""
    hook = WebhookReceiver()
    async with serve([("POST", "/hook{tail:.*}", hook.handle)]) as served:
        hook.url = f"{served.url}/hook"
        yield hook
