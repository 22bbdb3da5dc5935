"""Telling "the broker or the database is away, or busy" apart from "this task is bad".

An outage is waited out holding the message; anything else is a bug or a poison message and counts against the
delivery limit.
"""

from __future__ import annotations

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pymongo.errors import ConnectionFailure, OperationFailure

from . import retry

# MongoDB codes that mean "try again": interrupted, stepping down, no primary, write conflict.
_TRANSIENT_CODES = frozenset({91, 112, 189, 10107, 11600, 11602, 13435, 13436})


def is_busy(exc: BaseException) -> bool:
    """The database is up but momentarily contended: worth a quick retry, not an outage's patience."""
    # FerretDB on SQLite answers a busy database with a generic error: "database is locked".
    return isinstance(exc, OperationFailure) and (exc.code == 112 or "database is locked" in str(exc))


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionFailure, AMQPError, ChannelInvalidStateError, ConnectionError)):
        return True
    if isinstance(exc, OperationFailure):
        return is_busy(exc) or exc.code in _TRANSIENT_CODES or exc.has_error_label("RetryableWriteError")
    return False


def outage_policy(exc: BaseException | None) -> retry.Policy:
    """A busy database is retried within milliseconds; an absent service with patience."""
    return retry.BUSY if exc is not None and is_busy(exc) else retry.OUTAGE


def outage_delay(attempt: int, exc: BaseException | None = None) -> float:
    """Backoff with jitter: 0.5 s doubling to 30 s while a service is away; 50 ms doubling to 2 s when busy."""
    return outage_policy(exc).delay(attempt)


async def wait_out(attempt: int, exc: BaseException) -> float:
    """Wait before trying again after an outage; returns the seconds meant."""
    return await outage_policy(exc).wait(attempt)
