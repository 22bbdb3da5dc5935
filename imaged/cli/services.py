"""The connections an operator command opens: the task store and a plain broker connection.

Commands talk to MongoDB and RabbitMQ directly (not through a daemon), with short timeouts, and end on an outage
with :class:`~imaged.cli.app.Unavailable` (exit 6) rather than retrying the way the daemon does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractConnection
from pymongo.errors import PyMongoError

from ..diagnose import mask_url
from ..settings import Settings
from ..store import MongoTaskStore
from .app import Unavailable

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[MongoTaskStore]:
    store = MongoTaskStore.connect(
        settings.mongodb_url.get_secret_value(), settings.mongodb_db, timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
    )
    try:
        yield store
    finally:
        await store.close()


async def guard(settings: Settings, coro: Awaitable[T]) -> T:
    """Run a database operation, turning an outage into a printable :class:`Unavailable`."""
    try:
        return await coro
    except PyMongoError as exc:
        raise Unavailable(
            f"database {mask_url(settings.mongodb_url.get_secret_value())} unavailable: {type(exc).__name__}"
        ) from None


async def connect_broker(settings: Settings) -> AbstractConnection:
    """A connection to the broker (not a robust one: a command ends on an outage); :class:`Unavailable` if none."""
    url = settings.amqp_url.get_secret_value()
    try:
        return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        raise Unavailable(f"broker {mask_url(url)} unavailable: {type(exc).__name__}") from None
