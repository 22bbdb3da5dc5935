"""The hardened HTTP server (imaged.httpserver) against raw sockets: slow headers and bodies are cut off, oversize
and malformed requests are refused in the envelope without echo or traceback, and good clients see no change.

The deadlines are a few tenths of a second, so the suite stays fast; the time bounds around them are generous: they
tell "closed by the deadline" from "left open" (or from "closed by the other timer"), they are no performance claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imaged.api import error_middleware
from imaged.httpserver import GuardedAppRunner, HttpLimits, make_runner

from ..servers import serve

pytestmark = pytest.mark.timeout(60)

AIOHTTP_VERSION = tuple(int(part) for part in aiohttp.__version__.split(".")[:3] if part.isdigit())


# -- a tiny server ----------------------------------------------------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "message": "hello", "results": None})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"success": True, "message": "echo", "results": {"size": len(body)}})


SLOW_HANDLER_S = 0.8  # how long /slow takes to answer


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_HANDLER_S)
    return web.json_response({"success": True, "message": "slow", "results": None})


def make_app(*, with_error_middleware: bool = False) -> web.Application:
    app = web.Application(middlewares=[error_middleware] if with_error_middleware else [])
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/slow", slow)
    return app


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits, app: web.Application | None = None) -> AsyncIterator[int]:
    """The app (by default :func:`make_app`) behind the guarded runner under test; yields its port."""
    async with serve(app or make_app(), lambda app: make_runner(app, limits)) as server:
        yield server.port


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- raw HTTP -----------------------------------------------------------------------------------------------------


class Reply:
    def __init__(self, raw_head: bytes, body: bytes) -> None:
        lines = raw_head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        self.raw = raw_head + body
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_reply(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> Reply:
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        reply = Reply(head, b"")
        body = await reader.readexactly(int(reply.headers.get("content-length", "0")))
    return Reply(head, body)


async def read_to_eof(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything until the server closes; a reset counts as closed."""
    async with asyncio.timeout(timeout_s):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def post(body: bytes, *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    return head.encode() + body


def assert_refusal(reply: Reply, status: int) -> None:
    assert reply.status == status
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["connection"].lower() == "close"
    envelope = reply.json()
    assert envelope["success"] is False
    assert envelope["results"] is None
    assert isinstance(envelope["message"], str) and envelope["message"]


def assert_no_slice(secret: str, haystack: str, width: int = 20) -> None:
    leaked = [i for i in range(len(secret) - width + 1) if secret[i : i + width] in haystack]
    assert not leaked, f"{len(leaked)} slices of the secret leaked, e.g. at offset {leaked[0]}"


def assert_quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a log record carries a traceback"


# -- good clients -------------------------------------------------------------------------------------------------


async def test_get_post_and_keep_alive_work_as_before() -> None:
    async with serving(HttpLimits()) as port, connection(port) as (reader, writer):
        writer.write(get())
        first = await read_reply(reader)
        writer.write(post(b"x" * 1000))
        second = await read_reply(reader)
        writer.write(get())
        third = await read_reply(reader)

    assert first.status == 200 and first.json()["message"] == "hello"
    assert second.status == 200 and second.json()["results"] == {"size": 1000}
    assert third.status == 200
    for reply in (first, second, third):
        assert reply.headers.get("connection", "keep-alive").lower() != "close"


async def test_a_body_sent_in_pieces_within_the_deadline_is_read() -> None:
    async with serving(HttpLimits(body_timeout_s=1.0)) as port, connection(port) as (reader, writer):
        writer.write(post(b"a" * 50, length=100))
        await asyncio.sleep(0.1)
        writer.write(b"b" * 50)
        reply = await read_reply(reader)
    assert reply.status == 200 and reply.json()["results"] == {"size": 100}


async def test_an_idle_kept_alive_connection_lives_for_keepalive_timeout_not_header_timeout() -> None:
    limits = HttpLimits(header_timeout_s=0.2, keepalive_timeout=1.0)
    async with serving(limits) as port, connection(port) as (reader, writer):
        writer.write(get())
        assert (await read_reply(reader)).status == 200
        await asyncio.sleep(0.5)  # past the header timeout, well within keep-alive
        writer.write(get())
        assert (await read_reply(reader)).status == 200
        started = time.monotonic()
        assert await read_to_eof(reader, timeout_s=5.0) == b""
        elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 4.0  # the keep-alive timer closed it, not the header timer (0.2 s)


async def test_a_slow_handler_is_not_cut_by_the_header_timeout() -> None:
    limits = HttpLimits(header_timeout_s=0.2)
    assert 0.1 + 2 * limits.header_timeout_s < SLOW_HANDLER_S  # the header deadline passes while /slow runs
    async with serving(limits) as port, connection(port) as (reader, writer):
        writer.write(get("/slow"))
        await asyncio.sleep(0.1)
        writer.write(get())  # pipelined behind the slow request: its bytes arrive while the first is served
        first = await read_reply(reader)
        second = await read_reply(reader)
    assert (first.status, first.json()["message"]) == (200, "slow")
    assert (second.status, second.json()["message"]) == (200, "hello")


# -- slow clients -------------------------------------------------------------------------------------------------


async def test_slowloris_headers_are_cut_off_after_the_header_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            for byte in b"X-Slow: " + b"a" * 100:
                await asyncio.sleep(0.1)
                writer.write(bytes([byte]))
                await writer.drain()

    async with serving(HttpLimits(header_timeout_s=0.4)) as port, connection(port) as (reader, writer):
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer))
        try:
            data = await read_to_eof(reader, timeout_s=3.0)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        elapsed = time.monotonic() - started

    assert 0.2 < elapsed < 3.0
    if data:  # a 408 in the envelope, or nothing at all
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["success"] is False
    assert "request headers not complete" in caplog.text
    assert_quiet_logs(caplog)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with serving(HttpLimits(header_timeout_s=0.4)) as port, connection(port) as (reader, _):
        started = time.monotonic()
        data = await read_to_eof(reader, timeout_s=3.0)
        elapsed = time.monotonic() - started
    assert data == b""
    assert 0.2 < elapsed < 3.0


@pytest.mark.parametrize("with_error_middleware", [False, True], ids=["bare-app", "api-error-middleware"])
async def test_a_slow_body_gets_408_in_the_envelope(
    with_error_middleware: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(with_error_middleware=with_error_middleware)
    async with serving(HttpLimits(body_timeout_s=0.4), app) as port, connection(port) as (reader, writer):
        started = time.monotonic()
        writer.write(post(b"0123456789", length=100))
        reply = await read_reply(reader, timeout_s=3.0)
        elapsed = time.monotonic() - started
        rest = await read_to_eof(reader, timeout_s=3.0)

    assert 0.2 < elapsed < 3.0
    assert_refusal(reply, 408)
    assert rest == b""  # and the connection is closed
    assert "body not received" in caplog.text
    assert_quiet_logs(caplog)


# -- oversize and malformed requests ------------------------------------------------------------------------------


async def refused(port: int, request: bytes) -> tuple[Reply, bytes]:
    async with connection(port) as (reader, writer):
        writer.write(request)
        reply = await read_reply(reader)
        rest = await read_to_eof(reader, timeout_s=5.0)
    return reply, rest


async def test_an_oversize_header_is_refused_with_431_without_echo(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = ("eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(7000))[:8978]  # looks like a JWT
    header = f"Authorization: Bearer {token}"
    assert len(header) == 9000
    async with serving(HttpLimits()) as port:
        reply, rest = await refused(port, get(extra=header + "\r\n"))

    assert_refusal(reply, 431)
    assert rest == b""
    assert_no_slice(token, reply.raw.decode("latin-1"))
    assert_no_slice(token, caplog.text)
    assert_quiet_logs(caplog)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno in (logging.INFO, logging.WARNING)
    assert refusals[0].getMessage() == (
        "HTTP request refused from 127.0.0.1: request header too large: the limit is 8190 bytes"
    )


async def test_an_oversize_request_line_is_refused_with_414_without_echo(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = "/" + secrets.token_hex(4500)
    async with serving(HttpLimits()) as port:
        reply, _ = await refused(port, get(path))

    assert_refusal(reply, 414)
    assert_no_slice(path, reply.raw.decode("latin-1"))
    assert_no_slice(path, caplog.text)
    assert_quiet_logs(caplog)


@pytest.mark.skipif(AIOHTTP_VERSION < (3, 13, 4), reason="aiohttp enforces max_headers since 3.13.4")
async def test_too_many_headers_are_refused_with_431(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    extra = "".join(f"X-Header-{i}: v\r\n" for i in range(150))
    async with serving(HttpLimits(max_headers=100)) as port:
        reply, _ = await refused(port, get(extra=extra))
    assert_refusal(reply, 431)
    assert "X-Header" not in reply.raw.decode("latin-1")
    assert_quiet_logs(caplog)


async def test_a_malformed_request_is_refused_with_400_without_echo(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "SECRET-" + secrets.token_hex(16)
    async with serving(HttpLimits()) as port:
        reply, _ = await refused(port, f"GET / HTTP/1.1\r\nHost: x\r\nBad Header {secret}\r\n\r\n".encode())
    assert_refusal(reply, 400)
    assert "SECRET-" not in reply.raw.decode("latin-1")
    assert "SECRET-" not in caplog.text
    assert_quiet_logs(caplog)


# -- configuration ------------------------------------------------------------------------------------------------


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        HttpLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="max_headers"):
        HttpLimits(max_headers=-1)


def test_limits_are_not_also_given_as_runner_arguments() -> None:
    with pytest.raises(TypeError, match="keepalive_timeout"):
        make_runner(make_app(), HttpLimits(), keepalive_timeout=5)
    runner = make_runner(make_app(), HttpLimits(keepalive_timeout=7), access_log=None)
    assert isinstance(runner, GuardedAppRunner) and runner.limits.keepalive_timeout == 7
