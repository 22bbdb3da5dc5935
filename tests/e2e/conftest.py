"""Fixtures for the reliability suite: a cluster of daemon subprocesses on a fresh namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from imaged.simulator import Simulator, SimulatorConfig

from ..support import Bus
from .harness import Cluster

Report = Callable[[str], None]


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


def lifted_limits(task_seconds: float) -> SimulatorConfig:
    return SimulatorConfig.without_limits(task_seconds=task_seconds)


@pytest.fixture
async def make_cluster(
    namespace: str, tmp_path: Path, bus: Bus
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Build a cluster around a started emulator; its daemons and emulator are stopped after the test."""
    clusters: list[Cluster] = []
    simulators: list[Simulator] = []

    async def build(config: SimulatorConfig, **extra_env: str) -> Cluster:
        sim = Simulator(config)
        await sim.start()
        simulators.append(sim)
        cluster = Cluster(namespace, tmp_path, sim, config, dict(extra_env))
        clusters.append(cluster)
        return cluster

    yield build
    for cluster in clusters:
        for daemon in cluster.daemons:
            await daemon.kill()
    for sim in simulators:
        await sim.stop()
