"""Fixtures: real RabbitMQ, a real MongoDB-compatible server and the provider emulator, a namespace per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from imaged.daemon import Daemon
from imaged.errors import StorageError
from imaged.metrics import Metrics
from imaged.providers.aliyun import AliyunProvider
from imaged.providers.base import ProviderSettings
from imaged.providers.liblibai import LiblibProvider
from imaged.settings import Settings
from imaged.simulator import Simulator, SimulatorConfig
from imaged.storage import ImageStore
from imaged.storage.s3 import S3Settings, S3Store
from imaged.webhooks import WebhookSettings

from .servers import WebhookReceiver, webhook_receiver
from .support import (
    AMQP_URL,
    MONGODB_URL,
    S3_ACCESS_KEY_ID,
    S3_BUCKET,
    S3_ENDPOINT_URL,
    S3_SECRET_ACCESS_KEY,
    Bus,
    drop_namespace,
    new_namespace,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long reliability variants")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


async def _handshakes() -> list[str]:
    """What is not ready: a real AMQP handshake and a real MongoDB ping, not just an open port."""
    missing: list[str] = []
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        await connection.close()
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        missing.append(f"RabbitMQ ({type(exc).__name__})")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        missing.append(f"MongoDB ({type(exc).__name__})")
    finally:
        await client.close()
    return missing


@pytest.fixture(scope="session")
def services() -> None:
    """The real services must be up: `make services` starts them (and `make test` does so first)."""
    missing = asyncio.run(_handshakes())
    if missing:
        pytest.fail(f"{' and '.join(missing)} not ready: run `make services` first", pytrace=False)


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
    """Settings for a daemon in a test's namespace (the providers' own settings: :func:`sim_providers`)."""
    misplaced = [key for key in overrides if key.startswith(PROVIDER_PREFIXES)]
    assert not misplaced, f"provider settings go to make_daemon/sim_providers, not make_settings: {misplaced}"
    values: dict[str, object] = {
        "amqp_url": SecretStr(AMQP_URL),
        "amqp_prefix": namespace,
        "mongodb_url": SecretStr(MONGODB_URL),
        "mongodb_db": namespace,
        "image_dir": image_dir,
        "http_port": 0,
        "poll_first_delay_s": 0.1,
        "download_allowed_networks": ["127.0.0.0/8", "::1/128"],  # the emulator serves images on loopback
        "poll_max_interval_s": 0.5,
        "shutdown_grace_s": 5.0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


PROVIDER_PREFIXES = ("aliyun_", "liblibai_")


def sim_providers(sim: Simulator, **overrides: object) -> dict[str, ProviderSettings]:
    """The built-in providers' settings pointed at the emulator, with its default keys. ``overrides`` name a
    provider's field with its name first: ``aliyun_max_in_flight=1``, ``liblibai_extra_keys=[...]``."""
    config = SimulatorConfig()
    values: dict[str, dict[str, object]] = {
        "aliyun": {"api_key": SecretStr(config.dashscope_api_key), "base_url": sim.dashscope_base_url},
        "liblibai": {
            "access_key": SecretStr(config.liblib_access_key),
            "secret_key": SecretStr(config.liblib_secret_key),
            "base_url": sim.liblib_base_url,
        },
    }
    for key, value in overrides.items():
        provider, _, field = key.partition("_")
        assert provider in values, f"no provider {provider!r} for {key!r}"
        values[provider][field] = value
    return {
        "aliyun": AliyunProvider.load_settings(**values["aliyun"]),
        "liblibai": LiblibProvider.load_settings(**values["liblibai"]),
    }


def make_daemon(
    settings: Settings,
    sim: Simulator,
    *,
    image_store: ImageStore | None = None,
    webhook_settings: WebhookSettings | None = None,
    **provider_overrides: object,
) -> Daemon:
    """A daemon of ``settings`` whose built-in providers talk to the emulator (see :func:`sim_providers`);
    webhooks off unless ``webhook_settings`` are given (the environment is not read)."""
    return Daemon(
        settings,
        provider_settings=sim_providers(sim, **provider_overrides),
        metrics=Metrics(),
        image_store=image_store,
        webhook_settings=webhook_settings or WebhookSettings(_env_file=None),
    )


def s3_settings(prefix: str, **overrides: object) -> S3Settings:
    """Settings of the local S3-compatible server (`make services`), images under ``prefix``."""
    values: dict[str, object] = {
        "bucket": S3_BUCKET,
        "prefix": prefix,
        "endpoint_url": S3_ENDPOINT_URL,
        "region": "us-east-1",
        "access_key_id": S3_ACCESS_KEY_ID,
        "secret_access_key": SecretStr(S3_SECRET_ACCESS_KEY),
        "force_path_style": True,
    }
    values.update(overrides)
    return S3Settings.model_validate(values)


@pytest.fixture
async def s3_store(namespace: str) -> AsyncIterator[S3Store]:
    """An S3 store on the local server, its images under ``<namespace>/images/``; emptied afterwards."""
    store = S3Store(s3_settings(f"{namespace}/images/"))
    await store.start()
    try:
        await store.check()
    except StorageError as exc:
        await store.close()
        pytest.fail(f"the S3-compatible server is not ready ({exc}): run `make services`", pytrace=False)
    yield store
    await store.sweep(0)
    paginator = store.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=store.bucket, Prefix=f"{namespace}/"):
        keys = [item["Key"] for item in page.get("Contents", [])]
        if keys:
            await store.client.delete_objects(
                Bucket=store.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )
    await store.close()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook endpoint on loopback that verifies every delivery and answers as scripted (``servers.py``)."""
    async with webhook_receiver() as hook:
        yield hook


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
async def daemon(settings: Settings, simulator: Simulator, bus: Bus) -> AsyncIterator[Daemon]:
    d = make_daemon(settings, simulator)
    await d.start()
    yield d
    await d.stop()
