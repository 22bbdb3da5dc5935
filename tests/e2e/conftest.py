"""Fixtures for the reliability suite: a cluster of daemon subprocesses on a fresh namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from imaged.simulator import SimulatorConfig

from ..servers import emulator
from ..support import Bus
from .harness import Cluster, MakeCluster, Reliability, Report


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Print a line to the terminal even when output is captured: the suite's counts are its result."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{request.node.name}: {line}")

    return write


@pytest.fixture
async def make_cluster(namespace: str, tmp_path: Path, bus: Bus) -> AsyncIterator[MakeCluster]:
    """Build a cluster around a started emulator; after the test its daemons are killed and its emulator stopped."""
    async with AsyncExitStack() as stack:

        async def build(config: SimulatorConfig, **extra_env: str) -> Cluster:
            sim = await stack.enter_async_context(emulator(config))
            cluster = Cluster(namespace, tmp_path, sim, config, dict(extra_env))
            stack.push_async_callback(cluster.kill_all)
            return cluster

        yield build


@pytest.fixture
def reliability(make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool) -> Reliability:
    return Reliability(make_cluster, bus, report, long_run)
