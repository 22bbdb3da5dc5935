"""The record of webhook attempts: collection ``webhook_attempts``, one document per attempt.

What ``imaged webhooks list`` shows and what a replay sends again. A document holds what an operator needs
(event, attempt, when, outcome, status or error, latency) and the event's JSON text for a replay; of the URL only
the scheme, host and port are kept (receivers put tokens in paths and queries), so the real URL is never read
back from here: a replay takes it from the task.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from ..contract import utcnow
from ..redact import Redactor

COLLECTION = "webhook_attempts"
#: the fields ``list`` returns (the event's text is kept for replays only)
SHOWN = (
    "task_id",
    "event_id",
    "event",
    "delivery_id",
    "url",
    "attempt",
    "at",
    "outcome",
    "status",
    "error",
    "latency_ms",
    "next_attempt_at",
)


class Outcome(StrEnum):
    DELIVERED = "delivered"  # a 2xx answer
    RETRY = "retry"  # failed; tried again later
    GAVE_UP = "gave_up"  # failed, and the retry window is over (or the delivery kept coming back)
    REFUSED = "refused"  # the URL may not be reached (or cannot be signed): never tried again


def shown_url(url: str, key: bytes) -> str:
    """``url`` fit to store, log and show: scheme, host and port, and a short keyed digest of the whole.

    Receivers put their tokens anywhere (``/services/T/B/<token>``, ``?code=...``), so nothing after the host is
    shown; the digest tells URLs of the same host apart, and being keyed (HMAC with a key the replicas share) it
    cannot be used to guess a short token offline.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    digest = hmac.new(key, url.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:12]
    return f"{parts.scheme}://{netloc}/... ({digest})"


class AttemptLog:
    """Writes and reads ``webhook_attempts``."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], redactor: Redactor) -> None:
        self.collection: AsyncCollection[dict[str, Any]] = db[COLLECTION]
        self.redactor = redactor

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("task_id", ASCENDING), ("at", ASCENDING)], name="task_at")
        await self.collection.create_index([("at", ASCENDING)], name="at")  # retention

    async def record(
        self,
        *,
        task_id: str,
        event_id: str,
        event: str,
        delivery_id: str,
        url: str,
        attempt: int,
        outcome: Outcome,
        body: str,
        status: int | None = None,
        error: str | None = None,
        latency_ms: float | None = None,
        next_attempt_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Store one attempt; ``url`` as :func:`shown_url` gives it (never the real one)."""
        doc: dict[str, Any] = {
            "task_id": task_id,
            "event_id": event_id,
            "event": event,
            "delivery_id": delivery_id,
            "url": url,
            "attempt": attempt,
            "at": utcnow(),
            "outcome": outcome.value,
            "status": status,
            "error": None if error is None else self.redactor.text(error),
            "latency_ms": latency_ms,
            "next_attempt_at": next_attempt_at,
            "body": body,
        }
        await self.collection.insert_one(doc)
        return doc

    async def for_task(self, task_id: str) -> list[dict[str, Any]]:
        """A task's attempts, oldest first, without the event's text."""
        cursor = self.collection.find({"task_id": task_id}, {"_id": 0, **dict.fromkeys(SHOWN, 1)}).sort(
            [("at", ASCENDING), ("attempt", ASCENDING)]
        )
        return [doc async for doc in cursor]

    async def latest_per_event(self, task_id: str, event_id: str | None = None) -> list[dict[str, Any]]:
        """The latest attempt of each event of a task (or of one event), with the event's text."""
        query: dict[str, Any] = {"task_id": task_id}
        if event_id is not None:
            query["event_id"] = event_id
        latest: dict[str, dict[str, Any]] = {}
        async for doc in self.collection.find(query).sort([("at", ASCENDING), ("attempt", ASCENDING)]):
            latest[doc["event_id"]] = doc
        return list(latest.values())

    async def purge(self, before: datetime) -> int:
        """Retention: delete the attempts made before ``before``; returns how many."""
        result = await self.collection.delete_many({"at": {"$lt": before}})
        return result.deleted_count
