"""Open mode: only when nothing is configured, only on loopback, announced at start, ended by the first key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from imaged.auth import ApiKeys
from imaged.errors import ConfigError
from imaged.simulator import Simulator

from ..conftest import make_daemon, make_settings
from ..support import Bus, seed_body
from .support import assert_error_envelope, call

pytestmark = pytest.mark.timeout(60)


async def test_open_mode_refuses_a_non_loopback_host(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus
) -> None:
    settings = make_settings(namespace, tmp_path / "images", simulator, http_host="0.0.0.0")
    daemon = make_daemon(settings, simulator)
    try:
        with pytest.raises(ConfigError, match=r"IMAGED_HTTP_HOST=0\.0\.0\.0 is not a loopback address"):
            await daemon.start()
    finally:
        await daemon.stop()


async def test_open_mode_serves_everyone_until_a_key_appears(
    namespace: str,
    tmp_path: Path,
    simulator: Simulator,
    bus: Bus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(namespace, tmp_path / "images", simulator, api_key_cache_s=0.0)
    daemon = make_daemon(settings, simulator)
    await daemon.start()
    try:
        assert "OPEN MODE" in caplog.text
        await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id="open-1", user_id="guest")
        await bus.wait_terminal(["open-1"], within=30)
        async with aiohttp.ClientSession() as http:
            reply = await call(http, "GET", f"{daemon.http_url}/api/v1/tasks")
            assert reply.status == 200 and reply.body["results"]["total"] == 1
            reply = await call(http, "GET", f"{daemon.http_url}/api/v1/tasks/open-1/status")
            assert reply.status == 200
            _, key = await ApiKeys(daemon.store.db["api_keys"]).add("first")
            await asyncio.sleep(1.1)  # open mode re-checks the database at most once a second
            reply = await call(http, "GET", f"{daemon.http_url}/api/v1/tasks")
            assert_error_envelope(reply, 401)
            reply = await call(
                http, "GET", f"{daemon.http_url}/api/v1/tasks", headers={"Authorization": f"Bearer {key}"}
            )
            assert reply.status == 200 and reply.body["results"]["total"] == 0  # "guest" owns open-1
    finally:
        await daemon.stop()
    assert "now requires authentication" in caplog.text


async def test_bad_auth_configuration_stops_the_start(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus
) -> None:
    settings = make_settings(namespace, tmp_path / "images", simulator, api_keys={"alice": "not-a-digest"})
    daemon = make_daemon(settings, simulator)
    try:
        with pytest.raises(ConfigError, match="not a SHA-256 hex digest"):
            await daemon.start()
    finally:
        await daemon.stop()
