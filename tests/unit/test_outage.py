"""Outage or bug: the split that decides between waiting with a message and counting it against its limit."""

from __future__ import annotations

from aio_pika.exceptions import AMQPConnectionError
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure, ServerSelectionTimeoutError

from imaged.outage import is_busy, is_outage, outage_delay

BUSY = OperationFailure("[collection.go:177] database is locked (5) (SQLITE_BUSY)", code=1)


def test_unreachable_services_are_outages() -> None:
    assert is_outage(ServerSelectionTimeoutError("no servers"))
    assert is_outage(AutoReconnect("connection reset"))
    assert is_outage(AMQPConnectionError("gone"))
    assert is_outage(ConnectionResetError())


def test_a_busy_database_is_retried_quickly() -> None:
    assert is_busy(BUSY) and is_outage(BUSY)
    assert all(outage_delay(n, BUSY) <= 2.0 for n in range(10))
    assert max(outage_delay(6, ServerSelectionTimeoutError("x")) for _ in range(20)) > 2.0


def test_bugs_and_bad_data_are_not_outages() -> None:
    assert not is_outage(ValueError("bad"))
    assert not is_outage(KeyError("task"))
    assert not is_outage(DuplicateKeyError("E11000"))
    assert not is_outage(OperationFailure("unknown operator: $foo", code=2))
