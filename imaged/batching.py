"""Group commit: inserts and deletes that many jobs make at the same moment go to the database as one command.

The first write goes out at once; writes that arrive while a command is in flight wait for it and then go out
together. An idle daemon therefore pays no latency, and a busy one pays one round trip per batch instead of one
per write. Each write still learns its own outcome: a duplicate key fails only that insert.

Updates are not grouped: FerretDB 1.24 keeps the read cursor of every update statement of a command open until
the command ends and needs one more connection for each statement's write, so a command of many statements (or
many update commands at once) exhausts its pool of 100 SQLite connections and hangs it for good. Updates go one
per command, at most ``UPDATES_AT_ONCE`` at a time per collection.

Every statement addresses one document by ``_id``, so the database answers each from the ``_id`` index (a
filter on anything else, or ``$in``, makes FerretDB read the whole collection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pymongo import DeleteOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

log = logging.getLogger(__name__)

MAX_BATCH = 500
#: update commands in flight per collection (each holds two of FerretDB's connections while it runs)
UPDATES_AT_ONCE = 6

Op = TypeVar("Op")
Doc = dict[str, Any]


@dataclass
class _Pending(Generic[Op]):
    op: Op
    done: asyncio.Future[bool]


class _Queue(Generic[Op]):
    """Writes of one kind waiting for the next command; one command in flight at a time."""

    def __init__(self, send: Callable[[list[Op]], Awaitable[list[BaseException | bool]]]) -> None:
        self.send = send
        self.pending: list[_Pending[Op]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def submit(self, op: Op) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)  # a caller that was cancelled meanwhile never reads the outcome
        self.pending.append(_Pending(op, done))
        if self.flushing is None:
            self.flushing = asyncio.create_task(self._flush(), name="group-commit")
        # A cancelled caller must not cancel the batch its write rides in.
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                try:
                    outcomes = await self.send([p.op for p in batch])
                except asyncio.CancelledError:
                    for p in [*batch, *self.pending]:
                        p.done.cancel()
                    self.pending = []
                    raise
                except Exception as exc:  # noqa: BLE001 - every write of the batch learns why (an outage, usually)
                    for p in batch:
                        if not p.done.done():
                            p.done.set_exception(exc)
                    continue
                for p, outcome in zip(batch, outcomes, strict=True):
                    if p.done.done():
                        continue
                    if isinstance(outcome, BaseException):
                        p.done.set_exception(outcome)
                    else:
                        p.done.set_result(outcome)
        finally:
            self.flushing = None


def _retrieve(future: asyncio.Future[bool]) -> None:
    if not future.cancelled():
        future.exception()


def _outcomes(count: int, exc: BulkWriteError) -> list[BaseException | bool]:
    """Per-statement outcomes of an unordered bulk write that failed for some statements."""
    outcomes: list[BaseException | bool] = [True] * count
    for error in exc.details.get("writeErrors", []):
        index, code = error.get("index"), error.get("code")
        if not isinstance(index, int) or not 0 <= index < count:
            continue
        message = str(error.get("errmsg", "write failed"))
        if code == 11000:
            outcomes[index] = False
        else:
            outcomes[index] = OperationFailure(message, code=code, details=error)
    return outcomes


class WriteBatcher:
    """Group-committed inserts, updates and deletes by ``_id`` on one collection."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self.collection = collection
        self._inserts: _Queue[Doc] = _Queue(self._send_inserts)
        self._deletes: _Queue[DeleteOne] = _Queue(self._send_deletes)
        self._updates = asyncio.Semaphore(UPDATES_AT_ONCE)

    async def insert(self, doc: Doc) -> bool:
        """Insert a document; ``False`` if its ``_id`` exists already."""
        return await self._inserts.submit(doc)

    async def update(self, doc_id: Any, update: Doc) -> None:
        """Apply an update to the document with this ``_id`` (nothing happens if there is none)."""
        async with self._updates:
            await self.collection.update_one({"_id": doc_id}, update)

    async def delete(self, doc_id: Any) -> None:
        await self._deletes.submit(DeleteOne({"_id": doc_id}))

    async def _send_inserts(self, docs: list[Doc]) -> list[BaseException | bool]:
        if len(docs) == 1:
            try:
                await self.collection.insert_one(docs[0])
            except DuplicateKeyError:
                return [False]
            return [True]
        try:
            await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            return _outcomes(len(docs), exc)
        return [True] * len(docs)

    async def _send_deletes(self, ops: Sequence[DeleteOne]) -> list[BaseException | bool]:
        try:
            await self.collection.bulk_write(list(ops), ordered=False)
        except BulkWriteError as exc:
            return _outcomes(len(ops), exc)
        return [True] * len(ops)
