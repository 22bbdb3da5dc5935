"""Test helpers shared by integration and e2e tests: service addresses, namespaces, an event-capturing bus."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from pymongo import AsyncMongoClient

from imaged.broker import Topology
from imaged.providers import available_providers

AMQP_URL = os.environ.get("IMAGED_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MONGODB_URL = os.environ.get("IMAGED_TEST_MONGODB_URL", "mongodb://127.0.0.1:27017")
# The S3-compatible server of `make services` (SeaweedFS): path-style, these keys, this bucket.
S3_ENDPOINT_URL = os.environ.get("IMAGED_TEST_S3_ENDPOINT_URL", "http://127.0.0.1:8333")
S3_ACCESS_KEY_ID = os.environ.get("IMAGED_TEST_S3_ACCESS_KEY_ID", "imaged")
S3_SECRET_ACCESS_KEY = os.environ.get("IMAGED_TEST_S3_SECRET_ACCESS_KEY", "imaged-local-secret")
S3_BUCKET = os.environ.get("IMAGED_TEST_S3_BUCKET", "imaged")
SEED_DIR = Path(__file__).parent / "fixtures" / "seed"
SEED_MODELS = ["wanx2.1-t2i-turbo", "star-3-alpha-t2i", "star-3-alpha-i2i", "liblib-custom"]
# Pixel sizes the four original requests ask for.
SEED_SIZES = {
    "wanx2.1-t2i-turbo": (1024, 1024),
    "star-3-alpha-t2i": (768, 1024),
    "star-3-alpha-i2i": (768, 1024),
    "liblib-custom": (720, 1440),
}
IMAGE_NAME_RE = r"^(aliyun|liblibai)_\d{8}_\d{6}_\d+_[0-9a-f]{8}\.png$"


def seed_body(model: str) -> bytes:
    """One of the original README's request bodies, byte for byte."""
    return (SEED_DIR / f"{model}.json").read_bytes()


def new_namespace() -> str:
    return f"t{secrets.token_hex(5)}"


class Bus:
    """A test's view of RabbitMQ: publishes requests and records every event of its namespace."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.capture: AbstractQueue | None = None
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(AMQP_URL, timeout=10)
        self.channel = await self.connection.channel(publisher_confirms=True)
        exchange = await self.channel.declare_exchange(
            f"{self.prefix}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        # Durable, so events survive a broker restart in the reliability suite.
        self.capture = await self.channel.declare_queue(f"{self.prefix}.test-capture", durable=True)
        await self.capture.bind(exchange, routing_key="task.#")
        await self.capture.consume(self._on_event)

    async def _on_event(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        async with self._changed:
            self.events[event["task_id"]].append(event)
            self._changed.notify_all()
        await message.ack()

    async def publish(self, body: bytes, *, queue: str | None = None, **properties: Any) -> None:
        assert self.channel is not None
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json", **properties),
            routing_key=queue or f"{self.prefix}.requests",
        )

    def terminal(self, task_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events.get(task_id, []) if e["status"] in ("completed", "failed", "canceled")]

    async def wait_terminal(self, task_ids: Iterable[str], within: float) -> dict[str, dict[str, Any]]:
        """Wait until every task has a terminal event; return the first terminal event of each."""
        wanted = set(task_ids)

        def done() -> bool:
            return all(self.terminal(t) for t in wanted)

        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(done)
        return {t: self.terminal(t)[0] for t in wanted}

    async def wait_events(self, count: int, within: float) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: sum(len(v) for v in self.events.values()) >= count)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def delete_broker_objects(queues: Iterable[str], exchanges: Iterable[str] = ()) -> None:
    """Delete queues and exchanges; those already gone are fine."""
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                except aio_pika.exceptions.AMQPError:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()
    finally:
        await connection.close()


async def drop_namespace(prefix: str, providers: Iterable[str] | None = None) -> None:
    """Delete a test's queues, exchanges and database (names from :class:`Topology`; every installed provider)."""
    topology = Topology(prefix)
    lanes = list(available_providers()) if providers is None else list(providers)
    await delete_broker_objects([*topology.queues(lanes), f"{prefix}.test-capture"], topology.exchanges)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(prefix)
    finally:
        await client.close()
