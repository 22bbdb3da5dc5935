"""Fixtures of the contract tests: a real emulator on a free loopback port, one HTTP session, and a factory of
imaged's provider clients configured (their own settings) to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from imaged.providers import liblibai
from imaged.providers.aliyun import AliyunProvider
from imaged.providers.base import Provider
from imaged.providers.liblibai import LiblibProvider
from imaged.simulator import Simulator, SimulatorConfig

from .harness import ACCESS_KEY, API_KEY, SECRET_KEY, TASK_SECONDS, Client, Emulator, Secrets

ClientFactory = Callable[..., Client]

_CLASSES: dict[str, type[Provider]] = {"aliyun": AliyunProvider, "liblibai": LiblibProvider}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """Short tasks, no jitter, and every rate and concurrency limit lifted (the limit scenarios set them)."""
    simulator = Simulator(SimulatorConfig.without_limits(task_seconds=TASK_SECONDS))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def emu(sim: Simulator) -> AsyncIterator[Emulator]:
    async with aiohttp.ClientSession() as session:
        yield Emulator(sim, session)


@pytest.fixture
def leaks(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    """Records every signature the LiblibAI client computes (they are secrets too); a test may swap the signer."""
    guard = Secrets()
    original = liblibai.signed_query

    def signed_query(
        path: str,
        access_key: str,
        secret_key: str,
        *,
        timestamp_ms: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        if guard.signer is not None:
            query = guard.signer(path, access_key, secret_key)
        else:
            query = original(path, access_key, secret_key, timestamp_ms=timestamp_ms, nonce=nonce)
        guard.record(query)
        return query

    monkeypatch.setattr(liblibai.client, "signed_query", signed_query)
    return guard


@pytest.fixture
def make_client(emu: Emulator, leaks: Secrets) -> ClientFactory:
    """``make_client("aliyun" | "liblibai", **overrides)``: a real client pointed at the emulator; ``overrides``
    are the provider's own settings (``api_key=...``, ``secret_key=...``)."""

    defaults: dict[str, dict[str, Any]] = {
        "aliyun": {"api_key": API_KEY, "base_url": emu.sim.dashscope_base_url},
        "liblibai": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "base_url": emu.sim.liblib_base_url},
    }

    def make(provider: str, **overrides: Any) -> Client:
        cls = _CLASSES[provider]
        instance = cls(cls.load_settings(**{**defaults[provider], **overrides}), emu.session)
        credentials = instance.credentials()
        assert len(credentials) == 1
        return Client(instance, credentials[0], emu, leaks)

    return make
