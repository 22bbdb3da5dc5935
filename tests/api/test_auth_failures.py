"""A client that keeps failing authentication is slowed down (429); a valid credential is never locked out.

Guesses of database keys cost no lookup: a key whose id no active key has is refused from memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imaged.daemon import Daemon
from imaged.simulator import Simulator

from ..conftest import make_daemon
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
    daemon = make_daemon(settings, simulator)
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
        # A guesser behind the same proxy or NAT locks nobody out: a valid key from that address still works.
        async with http.get(url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as resp:
            assert resp.status == 200


async def test_guessed_database_keys_cost_no_lookup(strict_daemon: Daemon) -> None:
    url = f"{strict_daemon.http_url}/api/v1/tasks"
    registry = strict_daemon.metrics.registry

    def reads() -> float:
        return sum(
            registry.get_sample_value("imaged_db_commands_total", {"command": c}) or 0.0
            for c in ("find", "count", "aggregate")
        )

    before = reads()
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            guess = f"imk_{n:012x}_{'x' * 43}"
            async with http.get(url, headers={"Authorization": f"Bearer {guess}"}) as resp:
                assert resp.status == 401
    assert reads() - before <= 1  # at most one refresh of the active key ids, never a lookup per guess
