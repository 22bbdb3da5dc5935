"""Fixtures for the emulator tests: a real Simulator on a free loopback port and an HTTP session to talk to it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from PIL import Image

from imaged.simulator import Simulator, SimulatorConfig

ACCESS_KEY = "sim-access"
SECRET_KEY = "sim-secret"
API_KEY = "sk-sim"
T2I = "/api/v1/services/aigc/text2image/image-synthesis"
I2I = "/api/v1/services/aigc/image2image/image-synthesis"
MESSAGES = "/api/v1/services/aigc/image-generation/generation"
STAR3_T2I = "/api/generate/webui/text2img/ultra"
STAR3_TEMPLATE = "5d7e67009b344550bc1aa6ccbfa1d7f4"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """An emulator with short tasks and the rate and concurrency limits lifted (tests that need them set them)."""
    simulator = Simulator(SimulatorConfig.without_limits(task_seconds=0.2))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def hmac_signature(secret: str, path: str, timestamp: str, nonce: str, *, urlsafe: bool = True) -> str:
    """The test's own LiblibAI signature (independent of the emulator's code)."""
    digest = hmac.new(secret.encode("utf-8"), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    if urlsafe:
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return base64.b64encode(digest).decode()


def signed_params(
    path: str,
    *,
    access_key: str = ACCESS_KEY,
    secret: str = SECRET_KEY,
    timestamp_ms: int | None = None,
    urlsafe: bool = True,
) -> dict[str, str]:
    timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    nonce = secrets.token_hex(8)
    return {
        "AccessKey": access_key,
        "Signature": hmac_signature(secret, path, timestamp, nonce, urlsafe=urlsafe),
        "Timestamp": timestamp,
        "SignatureNonce": nonce,
    }


async def liblib(
    http: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    body: Any,
    **sign: Any,
) -> tuple[int, dict[str, Any]]:
    """POST a signed LiblibAI request; returns (HTTP status, envelope)."""
    async with http.post(
        f"{sim.liblib_base_url}{path}", params=signed_params(path, **sign), json=body
    ) as resp:
        return resp.status, await resp.json()


async def dashscope(
    http: aiohttp.ClientSession,
    sim: Simulator,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    async_header: bool = True,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    """One DashScope request; returns (HTTP status, JSON body, headers)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if async_header:
        headers["X-DashScope-Async"] = "enable"
    data = None if body is None else json.dumps(body)
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, f"{sim.url}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def t2i_body(**parameters: Any) -> dict[str, Any]:
    return {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "一只小猫"}, "parameters": parameters}


def star3_body(**params: Any) -> dict[str, Any]:
    return {"templateUuid": STAR3_TEMPLATE, "generateParams": {"prompt": "a cat", "imgCount": 1, **params}}


async def sim_post(http: aiohttp.ClientSession, sim: Simulator, path: str, body: Any) -> dict[str, Any]:
    async with http.post(f"{sim.url}{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def poll_dashscope(
    http: aiohttp.ClientSession, sim: Simulator, task_id: str, *, deadline: float = 10.0
) -> tuple[list[str], dict[str, Any]]:
    """Poll until terminal; returns the distinct states seen in order and the last answer."""
    seen: list[str] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status, body, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{task_id}")
        assert status == 200
        state = body["output"]["task_status"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"):
            return seen, body
        await asyncio.sleep(0.03)
    raise AssertionError(f"task {task_id} not terminal after {deadline}s: {seen}")


async def poll_liblib(
    http: aiohttp.ClientSession,
    sim: Simulator,
    uuid: str,
    *,
    path: str = "/api/generate/webui/status",
    deadline: float = 10.0,
    **sign: Any,
) -> tuple[list[int], dict[str, Any]]:
    """Poll until generateStatus is terminal (5, 6, 7); returns statuses seen in order and the last envelope."""
    seen: list[int] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        status, envelope = await liblib(http, sim, path, {"generateUuid": uuid}, **sign)
        assert status == 200
        generate_status = envelope["data"]["generateStatus"]
        if not seen or seen[-1] != generate_status:
            seen.append(generate_status)
        if generate_status in (5, 6, 7):
            return seen, envelope
        await asyncio.sleep(0.03)
    raise AssertionError(f"task {uuid} not terminal after {deadline}s: {seen}")


class Listener:
    """A loopback TCP server that only counts connections: proof that the emulator fetches nothing."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/source.png"


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    probe = Listener()
    probe.server = await asyncio.start_server(probe._accept, "127.0.0.1", 0)
    try:
        yield probe
    finally:
        probe.server.close()
        await probe.server.wait_closed()


async def png_size(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """Download an image the emulator handed out and read its size from the PNG itself."""
    async with http.get(url) as resp:
        assert resp.status == 200, url
        assert resp.content_type == "image/png"
        data = await resp.read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def messages_body(
    model: str, text: str = "一只小猫", images: tuple[str, ...] = (), **parameters: Any
) -> dict[str, Any]:
    """A messages-protocol (wan2.6) submit body: one user message, one text part, optional image parts."""
    content: list[dict[str, str]] = [{"text": text}, *({"image": image} for image in images)]
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }
