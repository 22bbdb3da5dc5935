"""Scenario 7: the daemon's own HTTP port against slow and oversize clients (``http_header_timeout_s=1``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from .conftest import StartDaemon
from .support import LeakLedger, LogCapture, daemon_secrets, leak_count, tenant_keys

pytestmark = pytest.mark.timeout(120)


async def read_to_eof(reader: asyncio.StreamReader, within: float) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def status_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("latin-1") if data else "no answer"


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slowloris_and_oversize_headers_against_the_daemons_port(
    start_daemon: StartDaemon, logs: LogCapture, ledger: LeakLedger
) -> None:
    daemon = await start_daemon(api_keys=tenant_keys(), http_header_timeout_s=1.0)
    assert daemon.http_url is not None

    async def trickle(writer: asyncio.StreamWriter) -> int:
        writer.write(b"GET /api/v1/tasks HTTP/1.1\r\nHost: imaged\r\n")
        sent = 0
        with contextlib.suppress(ConnectionError):
            for byte in b"X-Slow: " + b"a" * 200:
                await asyncio.sleep(0.25)
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
        return sent

    async with connection(daemon.http_url) as (reader, writer):
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer))
        data = await read_to_eof(reader, within=6.0)
        closed_after = time.monotonic() - started
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    assert 0.5 < closed_after < 3.0, closed_after
    head, _, body = data.partition(b"\r\n\r\n")
    if data:  # a 408 in the envelope, or nothing at all
        assert status_line(data).split()[1] == "408", head
        assert json.loads(body)["success"] is False
    print(
        f"slowloris (1 header byte every 0.25 s) -> connection closed after {closed_after:.2f}s "
        f"with {status_line(data)}"
    )

    token = ("eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(7000))[:8978]
    header = f"Authorization: Bearer {token}"
    assert len(header) == 9000
    async with connection(daemon.http_url) as (reader, writer):
        writer.write(f"GET /api/v1/tasks HTTP/1.1\r\nHost: imaged\r\n{header}\r\n\r\n".encode())
        raw = await read_to_eof(reader, within=5.0)
    _, _, body = raw.partition(b"\r\n\r\n")
    refused = status_line(raw)
    assert refused.split()[1] == "431", refused
    envelope = json.loads(body)
    assert envelope["success"] is False and envelope["results"] is None and envelope["message"]
    echoed = leak_count(token, raw.decode("latin-1"))
    in_logs = leak_count(token, logs.text)
    assert echoed == 0 and in_logs == 0
    assert "Traceback" not in logs.text

    async with connection(daemon.http_url) as (reader, writer):
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: imaged\r\nConnection: close\r\n\r\n")
        live = await read_to_eof(reader, within=5.0)
    assert status_line(live).split()[1] == "200", live[:200]
    texts = {"431 answer": raw.decode("latin-1"), "408 answer": data.decode("latin-1"), "logs": logs.text}
    assert ledger.check("7 HTTP limits", {**daemon_secrets(daemon), "bearer token": token}, texts) == 0
    print(
        f"9,000-byte Authorization header -> {refused}, envelope {envelope['message']!r}, "
        f"token or 10-char slices echoed: {echoed} (answer), {in_logs} (logs); /health/live still 200"
    )
