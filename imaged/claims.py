"""One replica drives a task at a time: its claim is a document ``{_id: task id, holder, state}`` in ``claims``.

A claim is taken by inserting it (the unique ``_id`` lets exactly one replica win, on MongoDB and FerretDB alike)
and is valid while its holder is alive (``replicas.py``): it needs no renewal. Nothing terminal is ever written
for a task without holding its claim.

A task on its first delivery starts from the copy that intake put in the lane message, without reading the
database, and inserts its claim just before it is submitted: the claim is then also the mark that a submit may
have reached the provider. If a claim exists already, the task was driven before (a crash, a lost channel, a
duplicate request): the job takes the slow way, reads the stored task and takes the claim over from a holder
that is gone, with what it knew (``state``). Claims stay after their task ended, so that a stale copy of a lane
message can never start the task again; retention deletes them with their tasks.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING
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


class Claims(abc.ABC):
    """Who drives which task. The daemon keeps claims in MongoDB; unit tests keep them in memory."""

    @abc.abstractmethod
    async def insert(self, task_id: str, state: ClaimState) -> bool:
        """Claim a task nobody ever claimed; False if a claim exists (whoever holds it)."""

    @abc.abstractmethod
    async def take(self, task_id: str, state: ClaimState, *, reentrant: bool = True) -> Claim:
        """Claim a task for this replica; not taken when a live replica holds it (this one too, unless
        ``reentrant``: a job of this replica holds it then, or held it and stopped)."""

    @abc.abstractmethod
    async def mark(self, task_id: str, state: ClaimState) -> None:
        """Record what the holder is doing with the task."""

    @abc.abstractmethod
    async def hand_back(self, task_id: str) -> None:
        """The job stopped without an outcome: anyone may take the claim over, and learns its state."""

    @abc.abstractmethod
    async def still_held(self, task_id: str) -> bool:
        """Whether this replica certainly still holds the claim (an outage may have let another take it)."""


class MongoClaims(Claims):
    """Claims in the ``claims`` collection, valid while their holder's registration is (``replicas.py``)."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], replicas: Replicas) -> None:
        self.collection = collection
        self.replicas = replicas
        self.writes = WriteBatcher(collection)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("at", ASCENDING)], name="at")

    def _doc(self, task_id: str, state: ClaimState) -> dict[str, Any]:
        return {"_id": task_id, "holder": self.replicas.me, "state": state.value, "at": utcnow()}

    async def insert(self, task_id: str, state: ClaimState) -> bool:
        return await self.writes.insert(self._doc(task_id, state))

    async def take(self, task_id: str, state: ClaimState, *, reentrant: bool = True) -> Claim:
        me = self.replicas.me
        previous: ClaimState | None = None
        for _ in range(3):
            if await self.writes.insert(self._doc(task_id, state)):
                return Claim(True, previous)
            existing = await self.collection.find_one({"_id": task_id})
            if existing is None:
                continue  # removed meanwhile: insert again
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
        update = {"$set": {"state": state.value}}
        if self.replicas.renewed_recently():  # nobody can have taken it over: address it by _id alone
            await self.writes.update(task_id, update)
        else:
            await self.collection.update_one({"_id": task_id, "holder": self.replicas.me}, update)

    async def hand_back(self, task_id: str) -> None:
        await self.collection.update_one(
            {"_id": task_id, "holder": self.replicas.me}, {"$set": {"holder": ""}}
        )

    async def still_held(self, task_id: str) -> bool:
        if self.replicas.renewed_recently():
            return True
        doc = await self.collection.find_one({"_id": task_id})
        return doc is not None and doc.get("holder") == self.replicas.me

    async def purge(self, *, before: datetime) -> int:
        """Retention: claims taken before the cutoff (their tasks are gone or going)."""
        result = await self.collection.delete_many({"at": {"$lt": before}})
        return result.deleted_count


def _state(value: Any) -> ClaimState | None:
    try:
        return ClaimState(value)
    except ValueError:
        return None
