"""Fixtures: real RabbitMQ, a real MongoDB-compatible server and the provider emulator, a namespace per test."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from imaged.daemon import Daemon
from imaged.metrics import Metrics
from imaged.settings import Settings
from imaged.simulator import Simulator, SimulatorConfig

from .support import AMQP_URL, MONGODB_URL, Bus, drop_namespace, new_namespace


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long reliability variants")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def services() -> None:
    """The real services must be up: `make services` starts them (and `make test` does so first)."""
    missing = [
        name
        for name, url, port in (("RabbitMQ", AMQP_URL, 5672), ("MongoDB", MONGODB_URL, 27017))
        if not _reachable(url, port)
    ]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable: run `make services` first", pytrace=False)


@pytest.fixture
def namespace(services: None) -> Iterator[str]:
    yield new_namespace()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(task_seconds=0.3))
    await sim.start()
    yield sim
    await sim.stop()


def make_settings(namespace: str, image_dir: Path, sim: Simulator, **overrides: object) -> Settings:
    """Settings for a daemon in a test's namespace, pointed at the emulator (with its default credentials)."""
    config = SimulatorConfig()
    values: dict[str, object] = {
        "amqp_url": SecretStr(AMQP_URL),
        "amqp_prefix": namespace,
        "mongodb_url": SecretStr(MONGODB_URL),
        "mongodb_db": namespace,
        "image_dir": image_dir,
        "http_port": 0,
        "aliyun_api_key": SecretStr(config.dashscope_api_key),
        "aliyun_base_url": sim.dashscope_base_url,
        "liblibai_access_key": SecretStr(config.liblib_access_key),
        "liblibai_secret_key": SecretStr(config.liblib_secret_key),
        "liblibai_base_url": sim.liblib_base_url,
        "poll_first_delay_s": 0.1,
        "download_allowed_networks": ["127.0.0.0/8", "::1/128"],  # the emulator serves images on loopback
        "poll_max_interval_s": 0.5,
        "shutdown_grace_s": 5.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(namespace: str, tmp_path: Path, simulator: Simulator) -> Settings:
    return make_settings(namespace, tmp_path / "images", simulator)


@pytest.fixture
async def bus(namespace: str) -> AsyncIterator[Bus]:
    b = Bus(namespace)
    await b.start()
    yield b
    await b.close()
    await drop_namespace(namespace)


@pytest.fixture
async def daemon(settings: Settings, bus: Bus) -> AsyncIterator[Daemon]:
    d = Daemon(settings, metrics=Metrics())
    await d.start()
    yield d
    await d.stop()
