"""Which replicas are alive: one document per daemon process in ``replicas``, renewed by heartbeat.

Claims on tasks and units of shared limits (``claims.py``, ``shares.py``) name the replica that holds them and
need no renewal of their own: they are valid while their holder is alive. A replica is alive while its document
is fresh; one that died is gone once its document expires (``IMAGED_LEASE_TTL_S``), at once when it was a
process of this host that no longer exists. The document also carries what the replica wants of each shared
limit and what it holds, so that every replica can work out a fair share from the same picture.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from .contract import utcnow

log = logging.getLogger(__name__)


def replica_id() -> str:
    """Names this process (host, pid and a random part: a restarted process is a new replica)."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_is_gone(holder: str, me: str) -> bool:
    """True when ``holder`` is a dead process of this host, so what it held need not wait out the TTL.

    Holders are ``host:pid:random`` (see ``replica_id``). Only this host's processes can be checked; a holder
    elsewhere is gone only when its registration expires.
    """
    host, pid, nonce = [*holder.split(":"), "", "", ""][:3]
    my_host, my_pid, my_nonce = [*me.split(":"), "", "", ""][:3]
    if host != my_host or not pid.isdigit():
        return False
    if pid == my_pid:
        return nonce != my_nonce  # an earlier process that had our pid (a restarted container)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


class Replicas:
    """This replica's registration and its view of the others."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], me: str, ttl_s: float) -> None:
        self.collection = collection
        self.me = me
        self.ttl_s = ttl_s
        #: the live replicas' documents by id, as last read (this replica's own included)
        self.view: dict[str, dict[str, Any]] = {}
        #: what this replica wants and holds of each shared pool, published with the heartbeat
        self.wants: dict[str, int] = {}
        self.holds: dict[str, int] = {}
        self._renewed_at: float | None = None
        self._published: tuple[Any, ...] | None = None

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("expires_at", ASCENDING)], name="expires_at")

    async def beat(self) -> bool:
        """Renew this replica's registration (when due or when what it publishes changed), then read the others.

        Returns True when the registration had lapsed before this renewal: whatever the replica held may have
        been taken over meanwhile, and the caller must check.
        """
        now = utcnow()
        clock = time.monotonic()
        published = (tuple(sorted(self.wants.items())), tuple(sorted(self.holds.items())))
        lapsed = self._renewed_at is not None and clock - self._renewed_at >= self.ttl_s
        if published != self._published or not self.renewed_recently(within=self.ttl_s / 3):
            await self.collection.update_one(
                {"_id": self.me},
                {
                    "$set": {
                        "host": os.uname().nodename,
                        "pid": os.getpid(),
                        "expires_at": now + timedelta(seconds=self.ttl_s),
                        "wants": dict(self.wants),
                        "holds": dict(self.holds),
                    },
                    "$setOnInsert": {"started_at": now},
                },
                upsert=True,
            )
            self._renewed_at = clock
            self._published = published
        docs = await self.collection.find({"expires_at": {"$gt": now}}).to_list()
        self.view = {str(doc["_id"]): doc for doc in docs}
        return lapsed

    def renewed_recently(self, *, within: float | None = None) -> bool:
        """Whether the registration is certainly still valid (others cannot have taken what we hold)."""
        limit = self.ttl_s * 2 / 3 if within is None else within
        return self._renewed_at is not None and time.monotonic() - self._renewed_at < limit

    def live(self) -> dict[str, dict[str, Any]]:
        """The live replicas as last seen, this one included."""
        view = dict(self.view)
        view.setdefault(self.me, {"_id": self.me, "wants": self.wants, "holds": self.holds})
        view[self.me] = {**view[self.me], "wants": self.wants, "holds": self.holds}
        return view

    async def is_gone(self, holder: str) -> bool:
        """Whether a holder of a claim or unit is certainly dead (read afresh: the view may be a second old)."""
        if holder == self.me:
            return False
        if holder_is_gone(holder, self.me):
            return True
        doc = await self.collection.find_one({"_id": holder})
        return doc is None or doc["expires_at"] <= utcnow()

    async def leave(self) -> None:
        """Deregister on a clean stop: what this replica held is free for the others at once."""
        await self.collection.delete_one({"_id": self.me})

    async def purge_expired(self, older_than_s: float = 3600.0) -> int:
        result = await self.collection.delete_many(
            {"expires_at": {"$lt": utcnow() - timedelta(seconds=older_than_s)}}
        )
        return result.deleted_count
