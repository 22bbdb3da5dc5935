"""One replica drives a task at a time: its claim is a document ``{_id: task id, holder, state}`` in ``claims``.

A claim is taken by inserting it (the unique ``_id`` lets exactly one replica win, on MongoDB and FerretDB alike)
and is valid while its holder is alive (``replicas.py``): it needs no renewal. A task on its first delivery takes
its claim just before it is submitted, so the claim is also the mark that a submit may have reached the provider;
a task delivered again (after a crash, a lost channel or a duplicate request) takes it before anything else. A
claim whose holder died is taken over with what it knew (``state``). Claims are deleted once their task ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from .batching import WriteBatcher
from .contract import utcnow
from .replicas import Replicas

log = logging.getLogger(__name__)


class ClaimState(StrEnum):
    """What the holder had done with the task when it last said so."""

    CLAIMED = "claimed"  # nothing sent to the provider yet
    SUBMITTING = "submitting"  # a submit may have reached the provider
    REFUSED = "refused"  # the last submit was answered with a definite "no"


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a claim."""

    taken: bool
    #: the state the claim had before: taken over from a dead holder, or our own from an earlier run
    previous: ClaimState | None = None
    holder: str | None = None


class Claims:
    def __init__(self, collection: AsyncCollection[dict[str, Any]], replicas: Replicas) -> None:
        self.collection = collection
        self.replicas = replicas
        self.writes = WriteBatcher(collection)

    async def take(self, task_id: str, state: ClaimState, *, reentrant: bool = True) -> Claim:
        """Claim a task for this replica; not taken when a live replica holds it (this one too, unless
        ``reentrant``: a job of this replica holds it then, or held it and stopped)."""
        me = self.replicas.me
        previous: ClaimState | None = None
        for _ in range(3):
            doc = {"_id": task_id, "holder": me, "state": state.value, "at": utcnow()}
            if await self.writes.insert(doc):
                return Claim(True, previous)
            existing = await self.collection.find_one({"_id": task_id})
            if existing is None:
                continue  # released meanwhile: insert again
            holder = str(existing.get("holder", ""))
            known = _state(existing.get("state"))
            if holder == me:
                if not reentrant:
                    return Claim(False, known, holder)
                if known is not ClaimState.SUBMITTING and state is ClaimState.SUBMITTING:
                    await self.mark(task_id, state)
                return Claim(True, known)
            if holder and not await self.replicas.is_gone(holder):
                return Claim(False, known, holder)
            if holder:
                log.info("taking over the claim of gone replica %s", holder, extra={"task_id": task_id})
            await self.collection.delete_one({"_id": task_id, "holder": holder})
            previous = known
        return Claim(False, previous)

    async def mark(self, task_id: str, state: ClaimState) -> None:
        await self.writes.update(task_id, {"$set": {"state": state.value}})

    async def release(self, task_id: str) -> None:
        """The task ended: forget the claim."""
        await self.writes.delete(task_id)

    async def hand_back(self, task_id: str) -> None:
        """The job stopped without an outcome: anyone may take the claim over, and learns its state."""
        await self.collection.update_one(
            {"_id": task_id, "holder": self.replicas.me}, {"$set": {"holder": ""}}
        )

    async def holds(self, task_id: str) -> bool:
        """Whether this replica still holds the claim (after an outage it may have been taken over)."""
        doc = await self.collection.find_one({"_id": task_id})
        return doc is not None and doc.get("holder") == self.replicas.me

    async def purge_stale(self, older_than_s: float) -> int:
        """Janitor: claims of replicas gone for longer than any task may last (their tasks cannot resume)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        removed = 0
        async for doc in self.collection.find({"at": {"$lt": cutoff}}):
            holder = str(doc.get("holder", ""))
            if await self.replicas.is_gone(holder):
                result = await self.collection.delete_one({"_id": doc["_id"], "holder": holder})
                removed += result.deleted_count
        return removed


def _state(value: Any) -> ClaimState | None:
    try:
        return ClaimState(value)
    except ValueError:
        return None
