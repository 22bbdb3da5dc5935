"""Servers on 127.0.0.1 for tests: small aiohttp apps scripted to answer (or to misbehave) as a test needs, the
provider emulator started and stopped around a block, and a port nobody listens on.

A fault server is a list of routes whose handlers are made by :func:`answer` (the same reply to every request:
an error envelope, HTML where JSON belongs, a truncated body, a Retry-After header) or are :func:`hang` (no reply
at all, until the server stops: a client's timeout must fire first).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from imaged.simulator import Simulator, SimulatorConfig

__all__ = ["Handler", "Route", "Served", "answer", "emulator", "free_port", "hang", "serve"]

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
