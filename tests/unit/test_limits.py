"""In-process slot pool: caps per credential, round-robin, pinning."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from imaged.limits import SlotPool
from imaged.providers import Credential


def cred(name: str, cap: int) -> Credential:
    return Credential(name, SecretStr("k"), None, "http://127.0.0.1", cap)


@pytest.mark.timeout(10)
async def test_never_more_than_the_cap() -> None:
    pool = SlotPool([cred("a", 2), cred("b", 1)], submit_per_second=1000)
    peak = {"a": 0, "b": 0}
    running = {"a": 0, "b": 0}

    async def work() -> None:
        async with pool.slot() as c:
            running[c.name] += 1
            peak[c.name] = max(peak[c.name], running[c.name])
            await asyncio.sleep(0.01)
            running[c.name] -= 1

    await asyncio.gather(*(work() for _ in range(30)))
    assert peak == {"a": 2, "b": 1}
    assert pool.in_use("a") == 0 and pool.in_use("b") == 0


@pytest.mark.timeout(10)
async def test_preferred_credential_is_kept() -> None:
    pool = SlotPool([cred("a", 1), cred("b", 1)], submit_per_second=1000)
    async with pool.slot(preferred="b") as c:
        assert c.name == "b"
        async with pool.slot() as other:
            assert other.name == "a"
