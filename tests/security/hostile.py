"""Hostile peers of the security suite: a fake DashScope whose every reply a test scripts, an "internal" server
that counts the requests it gets (it must get none), and PNG bytes built by hand.

The fake DashScope speaks the API imaged's aliyun client calls (``imaged/providers/aliyun.py``):

- ``POST {base}/services/aigc/text2image/image-synthesis`` (``Authorization: Bearer <key>``,
  ``X-DashScope-Async: enable``) answers ``{"output": {"task_id", "task_status": "PENDING"}}``;
- ``GET {base}/tasks/{id}`` answers the task's state (``output.task_status``, ``output.results[].url``, ``usage``);
- ``POST {base}/tasks/{id}/cancel`` answers 200.

A test scripts the replies per prompt (:class:`Script`); tasks without a script succeed with one good image served
by the same server under ``/img/``. Everything it is sent is recorded.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BASE_PATH = "/api/v1"
SUBMIT_PATH = f"{BASE_PATH}/services/aigc/text2image/image-synthesis"

# -- PNG bytes ------------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces ``width`` x ``height`` (8-bit greyscale, correct CRCs).

    Small sizes get real pixel data (a decodable image); large ones a tiny IDAT: the header is all imaged reads.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if width * height <= 1 << 16:
        raw = b"".join(b"\x00" + bytes((x * 4 + y) % 256 for x in range(width)) for y in range(height))
    else:
        raw = b"\x00" * 64
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


GOOD_PNG = png(64, 64)

# -- reply helpers --------------------------------------------------------------------------------------------------


def reply_json(body: Any, status: int = 200) -> web.Response:
    """A JSON reply; lone surrogates in ``body`` travel as ``\\udXXX`` escapes, as a hostile server may send them."""
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def running(task_id: str) -> web.Response:
    return reply_json(
        {
            "request_id": str(uuid.uuid4()),
            "output": {
                "task_id": task_id,
                "task_status": "RUNNING",
                "task_metrics": {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0},
            },
        }
    )


def succeeded(task_id: str, urls: list[str], usage: dict[str, Any] | None = None) -> web.Response:
    return reply_json(
        {
            "request_id": str(uuid.uuid4()),
            "output": {
                "task_id": task_id,
                "task_status": "SUCCEEDED",
                "results": [{"url": url, "actual_prompt": "a cat"} for url in urls],
                "task_metrics": {"TOTAL": len(urls), "SUCCEEDED": len(urls), "FAILED": 0},
            },
            "usage": usage if usage is not None else {"image_count": len(urls)},
        }
    )


def failed(task_id: str, code: Any, message: Any) -> web.Response:
    return reply_json(
        {
            "request_id": str(uuid.uuid4()),
            "output": {"task_id": task_id, "task_status": "FAILED", "code": code, "message": message},
        }
    )


# -- the fake DashScope ---------------------------------------------------------------------------------------------


@dataclass
class HostileTask:
    """One submit the fake DashScope received."""

    id: str
    prompt: str
    body: dict[str, Any]
    authorization: str
    async_header: str
    polls: int = 0
    #: the request being answered (a handler streaming its reply needs it)
    request: web.Request | None = None


Handler = Callable[[HostileTask], Awaitable[web.StreamResponse]]


@dataclass
class Script:
    """How the fake DashScope answers the tasks of one prompt. ``None``: the default behaviour."""

    submit: Handler | None = None
    poll: Handler | None = None
    #: held RUNNING until set (None: no gate)
    gate: asyncio.Event | None = None


@dataclass
class HostileDashScope:
    """The fake DashScope. ``await start()``, then point the DashScope provider's ``base_url`` at :attr:`base_url`."""

    host: str = "127.0.0.1"
    scripts: dict[str, Script] = field(default_factory=dict)
    tasks: dict[str, HostileTask] = field(default_factory=dict)
    submits: list[HostileTask] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    image_hits: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(SUBMIT_PATH, self._submit)
        app.router.add_get(f"{BASE_PATH}/tasks/{{task_id}}", self._poll)
        app.router.add_post(f"{BASE_PATH}/tasks/{{task_id}}/cancel", self._cancel)
        app.router.add_get("/img/{name}", self._image)
        app.router.add_get("/redirect/{name}", self._redirect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for script in self.scripts.values():
            if script.gate is not None:
                script.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{BASE_PATH}"

    def image_url(self, name: str, data: bytes = GOOD_PNG) -> str:
        """Serve ``data`` at ``/img/<name>`` and return its URL."""
        self.images[name] = data
        return f"http://{self.host}:{self.port}/img/{name}"

    def redirect_url(self, name: str, target: str) -> str:
        """A URL on this server that answers 302 to ``target``."""
        self.redirects[name] = target
        return f"http://{self.host}:{self.port}/redirect/{name}"

    def script(self, prompt: str, script: Script) -> Script:
        self.scripts[prompt] = script
        return script

    def submits_of(self, prompt: str) -> list[HostileTask]:
        return [t for t in self.submits if t.prompt == prompt]

    def default_success(self, task: HostileTask) -> web.Response:
        return succeeded(task.id, [self.image_url(f"ok-{task.id}.png")])

    # -- routes ---------------------------------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = str((body.get("input") or {}).get("prompt", ""))
        task = HostileTask(
            id=str(uuid.uuid4()),
            prompt=prompt,
            body=body,
            authorization=request.headers.get("Authorization", ""),
            async_header=request.headers.get("X-DashScope-Async", ""),
            request=request,
        )
        self.submits.append(task)
        script = self.scripts.get(prompt, Script())
        if script.submit is not None:
            return await script.submit(task)
        self.tasks[task.id] = task
        return reply_json(
            {"request_id": str(uuid.uuid4()), "output": {"task_id": task.id, "task_status": "PENDING"}}
        )

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return reply_json(
                {"output": {"task_id": request.match_info["task_id"], "task_status": "UNKNOWN"}}
            )
        task.polls += 1
        task.request = request
        script = self.scripts.get(task.prompt, Script())
        if script.gate is not None and not script.gate.is_set():
            return running(task.id)
        if script.poll is not None:
            return await script.poll(task)
        return self.default_success(task)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        self.cancels.append(request.match_info["task_id"])
        return reply_json({"request_id": str(uuid.uuid4())})

    async def _image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.image_hits[name] += 1
        data = self.images.get(name)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.image_hits[name] += 1
        raise web.HTTPFound(self.redirects[name])


# -- the internal server an SSRF would reach ------------------------------------------------------------------------


@dataclass
class InternalServer:
    """A server on loopback standing for an internal service (or cloud metadata): it counts every request."""

    hosts: tuple[str, ...] = ("127.0.0.1", "::1")
    hits: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hit)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        first = web.TCPSite(self._runner, self.hosts[0], 0)
        await first.start()
        self.port = int(self._runner.addresses[0][1])
        for host in self.hosts[1:]:
            # the same port on the other loopback addresses, where the system has them
            try:
                await web.TCPSite(self._runner, host, self.port).start()
            except OSError:
                continue

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hit(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(f"{request.method} {request.host}{request.path_qs}")
        return web.Response(body=GOOD_PNG, content_type="image/png")
