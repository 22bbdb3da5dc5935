"""Fixtures of the security suite: the hostile DashScope, the internal server, daemons (in process and as
subprocesses) pointed at them, log capture and the session's leak ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imaged.daemon import Daemon
from imaged.metrics import Metrics

from ..daemons import DaemonProcess
from ..support import Bus
from .hostile import HostileDashScope, InternalServer
from .support import (
    LeakLedger,
    LogCapture,
    hostile_providers,
    security_settings,
    subprocess_env,
)

StartDaemon = Callable[..., Awaitable[Daemon]]
SpawnDaemon = Callable[..., Awaitable[DaemonProcess]]

_LEDGER = LeakLedger()


@pytest.fixture(scope="session")
def ledger() -> LeakLedger:
    """Leak counts of every scenario of the session."""
    return _LEDGER


@pytest.fixture
async def hostile() -> AsyncIterator[HostileDashScope]:
    server = HostileDashScope()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def internal() -> AsyncIterator[InternalServer]:
    server = InternalServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    capture.install()
    yield capture
    capture.uninstall()


@pytest.fixture
async def start_daemon(
    namespace: str, tmp_path: Path, bus: Bus, hostile: HostileDashScope, logs: LogCapture
) -> AsyncIterator[StartDaemon]:
    """Start an in-process daemon facing the hostile DashScope; stopped after the test. Keyword arguments
    override settings, ``aliyun_<field>`` ones the DashScope provider's (``aliyun_max_in_flight=1``)."""
    started: list[Daemon] = []

    async def start(**overrides: Any) -> Daemon:
        aliyun = {k.removeprefix("aliyun_"): v for k, v in overrides.items() if k.startswith("aliyun_")}
        core = {k: v for k, v in overrides.items() if not k.startswith("aliyun_")}
        daemon = Daemon(
            security_settings(namespace, tmp_path / "images", **core),
            provider_settings=hostile_providers(hostile.base_url, **aliyun),
            metrics=Metrics(),
        )
        logs.use(daemon.redactor)  # the redactor the daemon's own log handler gets
        started.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


@pytest.fixture
async def spawn_daemon(
    namespace: str, tmp_path: Path, bus: Bus, hostile: HostileDashScope
) -> AsyncIterator[SpawnDaemon]:
    """Start ``imaged run`` as a subprocess (JSON logs at DEBUG into ``daemon.log_path``); killed after the test."""
    spawned: list[DaemonProcess] = []

    async def spawn(**env: str) -> DaemonProcess:
        process = DaemonProcess(
            f"daemon-{len(spawned)}",
            subprocess_env(namespace, tmp_path / "images", hostile.base_url, **env),
            tmp_path / f"daemon-{len(spawned)}.log",
        )
        spawned.append(process)
        await process.start()
        await process.wait_ready()
        return process

    yield spawn
    for process in spawned:
        await process.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
