"""Task state in MongoDB (collection ``tasks``, ``_id`` = task id).

Written for MongoDB 6/7 and FerretDB 1.24 alike: plain inserts, updates and finds; no transactions, change streams,
TTL indexes or projections in find-and-modify.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .contract import Status, utcnow

log = logging.getLogger(__name__)

TaskDoc = dict[str, Any]


class TaskStore:
    """Reads and writes task documents. One instance per daemon, created in its lifecycle."""

    def __init__(self, client: AsyncMongoClient[TaskDoc], db_name: str) -> None:
        self.client = client
        self.db: AsyncDatabase[TaskDoc] = client[db_name]
        self.tasks: AsyncCollection[TaskDoc] = self.db["tasks"]

    @classmethod
    def connect(cls, url: str, db_name: str, *, timeout_ms: int = 5000) -> TaskStore:
        client: AsyncMongoClient[TaskDoc] = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            retryWrites=False,  # FerretDB has no retryable writes; our writes are idempotent anyway
        )
        return cls(client, db_name)

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

    async def create(self, doc: TaskDoc) -> tuple[TaskDoc, bool]:
        """Insert a new task; if the id exists already, return the stored one. Idempotent by task id."""
        try:
            await self.tasks.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.get(doc["_id"])
            if existing is None:  # deleted between the two calls: try once more
                await self.tasks.insert_one(doc)
                return doc, True
            return existing, False
        return doc, True

    async def get(self, task_id: str) -> TaskDoc | None:
        return await self.tasks.find_one({"_id": task_id})

    async def update(
        self,
        task_id: str,
        fields: dict[str, Any],
        *,
        status: Status | None = None,
        inc: dict[str, int] | None = None,
    ) -> TaskDoc | None:
        """Set fields (and record a status change in the history); returns the updated document."""
        now = utcnow()
        update: dict[str, Any] = {"$set": {**fields, "updated_at": now}}
        if inc:
            update["$inc"] = inc
        if status is not None:
            update["$set"]["status"] = status.value
            update["$push"] = {"history": {"status": status.value, "at": now}}
        return await self.tasks.find_one_and_update(
            {"_id": task_id}, update, return_document=ReturnDocument.AFTER
        )

    async def purge_finished(self, *, before: datetime) -> int:
        """Retention: delete tasks that finished before the cutoff (their images stay on disk)."""
        terminal = [s.value for s in Status if s.terminal]
        result = await self.tasks.delete_many({"status": {"$in": terminal}, "finished_at": {"$lt": before}})
        return result.deleted_count

    async def next_seq(self, task_id: str) -> int:
        """Allocate the next event sequence number of a task."""
        doc = await self.tasks.find_one_and_update(
            {"_id": task_id}, {"$inc": {"seq": 1}}, return_document=ReturnDocument.AFTER
        )
        if doc is None:
            raise KeyError(task_id)
        return int(doc["seq"])

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int = 50,
        skip: int = 0,
        before: datetime | None = None,
    ) -> list[TaskDoc]:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if status is not None:
            query["status"] = status
        if before is not None:
            query["created_at"] = {"$lt": before}
        cursor = (
            self.tasks.find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip(skip)
            .limit(limit)
        )
        return [doc async for doc in cursor]

    async def count(self, *, owner: str | None = None, status: str | None = None) -> int:
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if status is not None:
            query["status"] = status
        return await self.tasks.count_documents(query)

    async def request_cancel(self, task_id: str) -> TaskDoc | None:
        """Mark a task for cancellation: its job cancels it at the provider on its next poll (or when it starts)."""
        return await self.update(task_id, {"cancel_requested": True, "cancel_requested_at": utcnow()})
