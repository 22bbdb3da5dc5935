"""A client that keeps failing authentication is slowed down (429) before its guesses reach the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imaged.daemon import Daemon
from imaged.metrics import Metrics
from imaged.simulator import Simulator

from ..support import Bus
from .conftest import ALICE_KEY, auth_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def strict_daemon(
    namespace: str, tmp_path: Path, simulator: Simulator, rsa_private: rsa.RSAPrivateKey, bus: Bus
) -> AsyncIterator[Daemon]:
    settings = auth_settings(
        namespace, tmp_path / "images", simulator, rsa_private, auth_failures_per_s=0.5, auth_failures_burst=3
    )
    daemon = Daemon(settings, metrics=Metrics())
    await daemon.start()
    yield daemon
    await daemon.stop()


async def test_repeated_bad_credentials_are_slowed_down(strict_daemon: Daemon) -> None:
    url = f"{strict_daemon.http_url}/api/v1/tasks"
    bad = {"Authorization": "Bearer not-a-key"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(url, headers=bad) as resp:
                assert resp.status == 401
        async with http.get(url, headers=bad) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            body = await resp.json()
        assert body["success"] is False and "failed authentication" in body["message"]
        # The same address with a good key waits too, briefly: the bucket refills at the configured rate.
        async with http.get(url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as resp:
            assert resp.status == 429
