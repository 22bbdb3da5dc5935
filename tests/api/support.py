"""Small HTTP helpers of the API tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..support import seed_body


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    text: str


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    data: bytes | None = None,
) -> Reply:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if json_body is not None:
        kwargs["json"] = json_body
    if data is not None:
        kwargs["data"] = data
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        return Reply(resp.status, body if isinstance(body, dict) else {"_": body}, dict(resp.headers), text)


def assert_error_envelope(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.text)
    assert reply.body["success"] is False, reply.text
    assert reply.body["results"] is None
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    assert "Traceback" not in reply.text


def seed_json(model: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(seed_body(model))
    body.update(changes)
    return body


async def wait_status(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], wanted: set[str], within: float
) -> dict[str, Any]:
    """Poll a task's status route until its status is one of ``wanted``."""
    async with asyncio.timeout(within):
        while True:
            reply = await call(http, "GET", url, headers=headers)
            if reply.status == 200 and reply.body["results"]["status"] in wanted:
                results: dict[str, Any] = reply.body["results"]
                return results
            await asyncio.sleep(0.1)
