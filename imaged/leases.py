"""Exclusive, expiring leases in MongoDB, shared by every replica.

A lease is a document whose ``_id`` names the thing held. Acquiring is an insert: the unique ``_id`` index makes
exactly one inserter win, on MongoDB and on FerretDB alike (a filtered update is not atomic on FerretDB, so it must
not decide who wins). The holder renews the lease by heartbeat; a lease whose holder died expires and is reclaimed.

Uses: a claim per running task (one replica drives a task at a time), one slot per allowed task in flight at a
provider credential, and one document per submit-rate time bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from .contract import utcnow

log = logging.getLogger(__name__)


def replica_id() -> str:
    """Names this process in lease documents (host, pid and a random part: a restarted process is a new holder)."""
    return f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_is_gone(holder: str, me: str) -> bool:
    """True when a lease's holder is a dead process on this host, so its lease need not wait out the TTL.

    Holders start with ``host:pid:random`` (see ``replica_id``). Only this host's processes can be checked; a
    holder elsewhere is gone only when its lease expires.
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


class Leases:
    """Acquire, renew and release leases; one instance per daemon, with one heartbeat loop for all its leases."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], ttl_s: float, holder_prefix: str) -> None:
        self.collection = collection
        self.ttl = timedelta(seconds=ttl_s)
        self.ttl_s = ttl_s
        self.holder_prefix = holder_prefix
        self.held: dict[str, str] = {}  # key -> holder

    async def try_acquire(
        self, key: str, holder: str, *, renew: bool = True, ttl_s: float | None = None
    ) -> bool:
        """Take the lease if it is free or expired. ``renew=False`` leases (rate buckets) just expire."""
        now = utcnow()
        ttl = self.ttl if ttl_s is None else timedelta(seconds=ttl_s)
        doc = {"_id": key, "holder": holder, "acquired_at": now, "expires_at": now + ttl}
        for _ in range(2):
            try:
                await self.collection.insert_one(dict(doc))
            except DuplicateKeyError:
                existing = await self.collection.find_one({"_id": key})
                if existing is None:
                    continue  # released meanwhile: try the insert again
                if existing.get("holder") == holder:
                    if renew:
                        self.held[key] = holder
                    return True
                if existing["expires_at"] > now and not holder_is_gone(
                    existing.get("holder", ""), self.holder_prefix
                ):
                    return False
                # Expired, or its holder died: remove exactly that stale document, then race for the insert.
                log.info("reclaiming expired lease %s of %s", key, existing.get("holder"))
                await self.collection.delete_one(
                    {"_id": key, "holder": existing.get("holder"), "expires_at": existing["expires_at"]}
                )
                continue
            if renew:
                self.held[key] = holder
            return True
        return False

    async def holds(self, key: str, holder: str) -> bool:
        """Whether the lease is still ours (it may have expired and been taken over during an outage)."""
        return await self.collection.find_one({"_id": key, "holder": holder}) is not None

    async def release(self, key: str, holder: str) -> None:
        self.held.pop(key, None)
        await self.collection.delete_one({"_id": key, "holder": holder})

    async def renew_all(self) -> None:
        expires = utcnow() + self.ttl
        for key, holder in list(self.held.items()):
            result = await self.collection.update_one(
                {"_id": key, "holder": holder}, {"$set": {"expires_at": expires}}
            )
            if result.matched_count == 0 and key in self.held:
                log.warning("lost lease %s (expired and taken over)", key)

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Renew every held lease a few times per TTL until ``stop`` is set; survives database outages."""
        interval = max(self.ttl_s / 3, 0.1)
        while not stop.is_set():
            try:
                await self.renew_all()
            except PyMongoError as exc:
                log.warning("lease heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def purge_expired(self, older_than_s: float = 60.0) -> int:
        """Janitor: drop leases whose holders are long gone (rate buckets, claims of killed replicas)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        result = await self.collection.delete_many({"expires_at": {"$lt": cutoff}})
        return result.deleted_count

    @contextlib.asynccontextmanager
    async def hold(self, key: str, holder: str, *, poll_s: float = 0.5) -> AsyncIterator[None]:
        """Wait until the lease is ours, hold it for the block, release it after."""
        while True:
            if await self.try_acquire(key, holder):
                break
            await asyncio.sleep(poll_s * (0.5 + secrets.randbelow(1000) / 1000))
        try:
            yield
        finally:
            await asyncio.shield(self.release_quietly(key, holder))

    async def release_quietly(self, key: str, holder: str) -> None:
        try:
            await self.release(key, holder)
        except PyMongoError as exc:  # it expires by itself
            log.warning("could not release lease %s: %s", key, exc)
