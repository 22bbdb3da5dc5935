"""Task state in MongoDB (collection ``tasks``, ``_id`` = task id), behind the :class:`TaskStore` interface.

Written for MongoDB 6/7 and FerretDB 1.24 alike: plain inserts, updates and finds; no transactions, change streams,
TTL indexes or projections in find-and-modify. The hot path addresses documents by ``_id`` only (FerretDB answers
nothing else from an index) and group-commits its writes (see ``batching.py``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from .batching import WriteBatcher
from .contract import Status, utcnow
from .task import Task

#: deletes images by storage URL (the image store's ``delete``)
DeleteImages = Callable[[list[str]], Awaitable[int]]
#: tasks retention reads, deletes the images of, and deletes at a time
PURGE_BATCH = 500

log = logging.getLogger(__name__)

TaskDoc = dict[str, Any]


class TaskStore(abc.ABC):
    """Where tasks live. The daemon uses MongoDB; unit tests use an in-memory store with the same behaviour."""

    @abc.abstractmethod
    async def create(self, task: Task) -> tuple[Task, bool]:
        """Store a new task; if its id exists already, return the stored one instead. Idempotent by task id."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task | None:
        """The stored task, or ``None``."""

    @abc.abstractmethod
    async def save(
        self,
        task_id: str,
        fields: dict[str, Any],
        *,
        status: Status | None = None,
        inc: dict[str, int] | None = None,
    ) -> None:
        """Set fields of a task (and record a status change in its history). Nothing happens to a missing task."""

    @abc.abstractmethod
    async def request_cancel(self, task_id: str) -> Task | None:
        """Mark a task for cancellation; returns it as stored afterwards (``None`` if there is no such task)."""

    @abc.abstractmethod
    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int = 50,
        skip: int = 0,
    ) -> list[Task]:
        """Tasks, newest first."""

    @abc.abstractmethod
    async def count(self, *, owner: str | None = None, status: str | None = None) -> int: ...

    @abc.abstractmethod
    async def latest_with_fingerprint(self, fingerprint: str, *, since: datetime) -> Task | None:
        """The newest task created since then from a request with this fingerprint (see ``Task.fingerprint``)."""

    @abc.abstractmethod
    async def purge_finished(self, *, before: datetime, delete_images: DeleteImages | None = None) -> int:
        """Retention: delete tasks that finished before the cutoff; their images too when ``delete_images`` is
        given (called with their storage URLs before the tasks go, so no image outlives its task unseen)."""

    @staticmethod
    def update_for(
        fields: dict[str, Any], status: Status | None = None, inc: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The MongoDB update document of :meth:`save`."""
        now = utcnow()
        update: dict[str, Any] = {"$set": {**fields, "updated_at": now}}
        if inc:
            update["$inc"] = inc
        if status is not None:
            update["$set"]["status"] = status.value
            # With the event's sequence number, so that an event stream can replay the task's story
            entry = {"status": status.value, "at": now} | ({"seq": fields["seq"]} if "seq" in fields else {})
            update["$push"] = {"history": entry}
        return update


class CommandCounter(monitoring.CommandListener):
    """Counts the commands this process sends to the database (``imaged_db_commands_total``)."""

    def __init__(self, count: Any) -> None:
        self.count = count  # a labelled counter: .labels(command).inc()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count.labels(event.command_name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def connect(
    url: str, *, timeout_ms: int = 5000, listeners: list[monitoring.CommandListener] | None = None
) -> AsyncMongoClient[TaskDoc]:
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        retryWrites=False,  # FerretDB has no retryable writes; our writes are idempotent anyway
        event_listeners=listeners or [],
    )


class MongoTaskStore(TaskStore):
    """Tasks in MongoDB. One instance per daemon (or command), created in its lifecycle."""

    def __init__(self, client: AsyncMongoClient[TaskDoc], db_name: str) -> None:
        self.client = client
        self.db: AsyncDatabase[TaskDoc] = client[db_name]
        self.tasks: AsyncCollection[TaskDoc] = self.db["tasks"]
        self.writes = WriteBatcher(self.tasks)

    @classmethod
    def connect(
        cls,
        url: str,
        db_name: str,
        *,
        timeout_ms: int = 5000,
        listeners: list[monitoring.CommandListener] | None = None,
    ) -> MongoTaskStore:
        return cls(connect(url, timeout_ms=timeout_ms, listeners=listeners), db_name)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> bool:
        await self.db.command("ping")
        return True

    async def ensure_indexes(self) -> None:
        await self.tasks.create_index(
            [("owner", ASCENDING), ("created_at", DESCENDING)], name="owner_created"
        )
        await self.tasks.create_index(
            [("status", ASCENDING), ("updated_at", ASCENDING)], name="status_updated"
        )
        await self.tasks.create_index([("provider_task_id", ASCENDING)], name="provider_task_id")
        await self.tasks.create_index([("finished_at", ASCENDING)], name="finished_at")
        await self.tasks.create_index(
            [("fingerprint", ASCENDING), ("created_at", DESCENDING)], name="fingerprint_created"
        )

    async def create(self, task: Task) -> tuple[Task, bool]:
        if await self.writes.insert(task.to_doc()):
            return task, True
        existing = await self.get(task.id)
        if existing is None:  # deleted between the two calls: try once more
            if await self.writes.insert(task.to_doc()):
                return task, True
            existing = await self.get(task.id)
            if existing is None:
                raise RuntimeError(f"task {task.id} could neither be inserted nor read")
        return existing, False

    async def get(self, task_id: str) -> Task | None:
        doc = await self.tasks.find_one({"_id": task_id})
        return None if doc is None else Task.from_doc(doc)

    async def latest_with_fingerprint(self, fingerprint: str, *, since: datetime) -> Task | None:
        doc = await self.tasks.find_one(
            {"fingerprint": fingerprint, "created_at": {"$gte": since}}, sort=[("created_at", DESCENDING)]
        )
        return None if doc is None else Task.from_doc(doc)

    async def save(
        self,
        task_id: str,
        fields: dict[str, Any],
        *,
        status: Status | None = None,
        inc: dict[str, int] | None = None,
    ) -> None:
        await self.writes.update(task_id, self.update_for(fields, status, inc))

    async def request_cancel(self, task_id: str) -> Task | None:
        await self.tasks.update_one(
            {"_id": task_id},
            self.update_for({"cancel_requested": True, "cancel_requested_at": utcnow()}),
        )
        return await self.get(task_id)

    async def purge_finished(self, *, before: datetime, delete_images: DeleteImages | None = None) -> int:
        terminal = [s.value for s in Status if s.terminal]
        query = {"finished_at": {"$lt": before}, "status": {"$in": terminal}}
        if delete_images is None:
            result = await self.tasks.delete_many(query)
            return result.deleted_count
        removed = 0
        while True:
            batch = await self.tasks.find(query, {"_id": 1, "result.images": 1}).limit(PURGE_BATCH).to_list()
            if not batch:
                return removed
            await delete_images([url for doc in batch for url in image_urls(doc)])
            result = await self.tasks.delete_many({"_id": {"$in": [doc["_id"] for doc in batch]}})
            removed += result.deleted_count

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int = 50,
        skip: int = 0,
    ) -> list[Task]:
        cursor = (
            self.tasks.find(self._query(owner, status))
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip(skip)
            .limit(limit)
        )
        return [Task.from_doc(doc) async for doc in cursor]

    async def count(self, *, owner: str | None = None, status: str | None = None) -> int:
        return await self.tasks.count_documents(self._query(owner, status))

    @staticmethod
    def _query(owner: str | None, status: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if status is not None:
            query["status"] = status
        return query


def image_urls(doc: Mapping[str, Any]) -> list[str]:
    """The storage URLs of a stored task's images (imaged 0.1 results have only ``local_path``)."""
    result = doc.get("result")
    images = result.get("images") if isinstance(result, Mapping) else None
    urls: list[str] = []
    for image in images if isinstance(images, list) else []:
        if not isinstance(image, Mapping):
            continue
        if isinstance(image.get("storage_url"), str):
            urls.append(image["storage_url"])
        elif isinstance(image.get("local_path"), str) and Path(image["local_path"]).is_absolute():
            urls.append(Path(image["local_path"]).as_uri())
    return urls
