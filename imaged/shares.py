"""Limits shared by every replica, at no database cost per task.

A limit is a pool of interchangeable units: the tasks a credential may have in flight (one unit per task), or
the phases of its request rate (time is cut into turns of ``1/rate`` seconds, and turn ``n`` belongs to phase
``n mod PHASES``). Each unit is a document ``{_id: "<pool>:<unit>", holder: <replica>}`` in ``shares``; the
unique ``_id`` makes a unit exclusive on MongoDB and FerretDB alike, so the replicas together can never hold
more units than the pool has, and two replicas never own the same turn.

Units belong to replicas, not to tasks. A replica takes units when its tasks want them and keeps them: a task
takes and returns a unit in memory. Every period (``PERIOD_S``) the keeper publishes what this replica wants
and holds in the registry (``replicas.py``), works out every replica's fair share of each pool from the same
picture (water-filling over what each wants), gives back idle units above its share when others go short, and
takes free units (or units of dead replicas) up to its share when it wants more. A replica whose registration
could not be renewed stops using its units before the others may take them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from .batching import WriteBatcher
from .replicas import Replicas

log = logging.getLogger(__name__)

PERIOD_S = 1.0
#: phases of a rate: a replica that holds k of them gets k/PHASES of the rate
PHASES = 16
#: a replica that has wanted nothing of a pool for this long gives its units back even if nobody asks
IDLE_RELEASE_S = 30.0
#: a rate pool counts as wanted for this long after its last turn
RATE_ACTIVE_S = 30.0
#: at most this many keeper runs a second when tasks keep asking for units
POKE_INTERVAL_S = 0.02


class Signal:
    """Wakes every waiter when something changed; cheaper and simpler than a Condition without a lock."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, at_most_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, at_most_s)
        finally:
            self._waiters.discard(waiter)

    def fire(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


def fair_shares(size: int, wants: dict[str, int]) -> dict[str, int]:
    """Split ``size`` units by water-filling: nobody gets more than it wants, the rest is split evenly (the
    remainder goes in replica-id order, so every replica computes the same answer)."""
    shares = dict.fromkeys(wants, 0)
    left = size
    hungry = sorted(r for r, want in wants.items() if want > 0)
    while left > 0 and hungry:
        each = max(1, left // len(hungry))
        for replica in list(hungry):
            give = min(each, wants[replica] - shares[replica], left)
            shares[replica] += give
            left -= give
            if shares[replica] >= wants[replica]:
                hungry.remove(replica)
            if left == 0:
                break
    return shares


class Pool:
    """One limited resource shared by the replicas: ``size`` units, some of them held by this replica."""

    def __init__(self, name: str, size: int, *, rate: bool = False) -> None:
        self.name = name
        self.size = size
        self.rate = rate
        self.held: set[int] = set()
        self.busy: dict[int, int] = {}  # unit -> uses in progress
        self.waiting = 0
        self.last_wanted = time.monotonic()
        self.starved_until = 0.0

    @property
    def wants(self) -> int:
        """How many units this replica wants now (published to the others)."""
        if self.rate:
            return self.size if time.monotonic() - self.last_wanted < RATE_ACTIVE_S else 0
        return min(self.size, len(self.busy) + self.waiting)

    def idle_units(self) -> list[int]:
        return [unit for unit in self.held if not self.busy.get(unit)]

    def take_idle(self) -> int | None:
        for unit in self.held:
            if not self.busy.get(unit):
                self.busy[unit] = 1
                return unit
        return None

    def use(self, unit: int) -> None:
        self.busy[unit] = self.busy.get(unit, 0) + 1

    def done(self, unit: int) -> None:
        left = self.busy.get(unit, 0) - 1
        if left > 0:
            self.busy[unit] = left
        else:
            self.busy.pop(unit, None)

    def unit_id(self, unit: int) -> str:
        return f"{self.name}:{unit}"


def _rounded(wants: int, size: int) -> int:
    """What a replica publishes as its want: small numbers exactly, larger ones rounded up to a power of two,
    so that the registry is not rewritten every time one more task waits."""
    if wants <= 8:
        return wants
    return min(size, 1 << (wants - 1).bit_length())


class Shares:
    """The pools of a replica that is alone: it owns every unit, and no database is involved (unit tests, and
    the base of :class:`SharedShares`)."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self.changed = Signal()
        self._poked = asyncio.Event()

    def pool(self, name: str, size: int, *, rate: bool = False) -> Pool:
        if name not in self.pools:
            self.pools[name] = self._new_pool(name, size, rate)
        return self.pools[name]

    def _new_pool(self, name: str, size: int, rate: bool) -> Pool:
        pool = Pool(name, size, rate=rate)
        pool.held = set(range(size))
        return pool

    @property
    def usable(self) -> bool:
        return True

    def poke(self) -> None:
        """A task wants a unit this replica does not hold: run the keeper soon."""
        self._poked.set()

    async def keep(self) -> None:
        """Trade units with the other replicas (nothing to trade when alone)."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def release_all(self) -> None:
        """On a clean stop: give every unit back."""


class SharedShares(Shares):
    """The pools of a replica among others, traded through the registry and the ``shares`` collection."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]], replicas: Replicas) -> None:
        super().__init__()
        self.collection = collection
        self.writes = WriteBatcher(collection)
        self.replicas = replicas
        self._ready = False

    def _new_pool(self, name: str, size: int, rate: bool) -> Pool:
        return Pool(name, size, rate=rate)

    @property
    def usable(self) -> bool:
        """Units may be used only while this replica's registration is certainly valid."""
        return self._ready and self.replicas.renewed_recently()

    # -- the keeper ---------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Every period: renew the registration and rebalance every pool. When poked in between: take units
        where tasks wait, judged from the last picture. Logs a failure and keeps going (outages included)."""
        next_beat = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + PERIOD_S
                    await self.keep()
                else:
                    await self.top_up()
            except PyMongoError as exc:
                log.warning("shared limits: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("shared limits: keeper run failed")
            self.changed.fire()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_poke(stop), max(0.0, next_beat - time.monotonic()))
            await asyncio.sleep(POKE_INTERVAL_S)  # pokes come in bursts: serve them together

    async def _wait_poke(self, stop: asyncio.Event) -> None:
        poked = asyncio.ensure_future(self._poked.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([poked, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            poked.cancel()
            stopped.cancel()
        self._poked.clear()

    async def keep(self) -> None:
        """A full keeper run: publish, renew, read the others, rebalance every pool."""
        self.replicas.wants = {name: _rounded(pool.wants, pool.size) for name, pool in self.pools.items()}
        self.replicas.holds = {name: len(pool.held) for name, pool in self.pools.items()}
        lapsed = await self.replicas.beat()
        if lapsed or not self._ready:
            await self._resync()
            self._ready = True
        live = self.replicas.live()
        for pool in self.pools.values():
            await self._balance(pool, live, release=True)

    async def top_up(self) -> None:
        """Take units for waiting tasks, from the last picture of the others (no registry round trip)."""
        if not self._ready:
            return
        live = self.replicas.live()
        for pool in self.pools.values():
            if pool.wants > len(pool.held) and time.monotonic() >= pool.starved_until:
                await self._balance(pool, live, release=False)

    async def _balance(self, pool: Pool, live: dict[str, dict[str, Any]], *, release: bool) -> None:
        me = self.replicas.me
        wants = {r: int((doc.get("wants") or {}).get(pool.name, 0)) for r, doc in live.items()}
        holds = {r: int((doc.get("holds") or {}).get(pool.name, 0)) for r, doc in live.items()}
        wants[me], holds[me] = pool.wants, len(pool.held)
        share = fair_shares(pool.size, wants)
        mine = share[me]
        if pool.wants > 0:
            pool.last_wanted = time.monotonic()
        if release and len(pool.held) > mine:
            others_short = sum(max(0, share[r] - holds[r]) for r in live if r != me)
            unheld = pool.size - sum(holds.values())
            idle_long = pool.wants == 0 and time.monotonic() - pool.last_wanted > IDLE_RELEASE_S
            if others_short > unheld or idle_long:
                await self._release(pool, pool.idle_units()[: len(pool.held) - mine])
        wanted = min(pool.wants, mine)
        if wanted > len(pool.held):
            before = len(pool.held)
            await self._acquire(pool, wanted - before, live)
            if len(pool.held) == before:  # nothing free: do not ask again before the next period
                pool.starved_until = time.monotonic() + PERIOD_S

    async def _release(self, pool: Pool, units: Iterable[int]) -> None:
        units = list(units)
        if not units:
            return
        for unit in units:
            pool.held.discard(unit)
        await asyncio.gather(*(self.writes.delete(pool.unit_id(u)) for u in units))
        log.debug("gave back %d unit(s) of %s", len(units), pool.name)

    async def _acquire(self, pool: Pool, count: int, live: dict[str, dict[str, Any]]) -> None:
        me = self.replicas.me
        taken = await self._holders(pool)
        free = [u for u in range(pool.size) if u not in taken]
        random.shuffle(free)  # replicas acquiring at once mostly pick different units
        candidates = free[:count]
        if len(candidates) < count:
            for holder in {h for h in taken.values() if h != me and h not in live}:
                if len(candidates) >= count:
                    break
                if not await self.replicas.is_gone(holder):
                    continue
                stale = [u for u, h in taken.items() if h == holder][: count - len(candidates)]
                log.info("taking over %d unit(s) of %s from gone replica %s", len(stale), pool.name, holder)
                for unit in stale:
                    await self.collection.delete_one({"_id": pool.unit_id(unit), "holder": holder})
                candidates.extend(stale)
        won = await asyncio.gather(
            *(self.writes.insert({"_id": pool.unit_id(u), "holder": me}) for u in candidates)
        )
        pool.held.update(u for u, ok in zip(candidates, won, strict=True) if ok)

    async def _holders(self, pool: Pool) -> dict[int, str]:
        """Every unit of the pool that somebody holds, by unit number."""
        prefix = f"^{re.escape(pool.name)}:"
        taken: dict[int, str] = {}
        async for doc in self.collection.find({"_id": {"$regex": prefix}}):
            unit = str(doc["_id"]).rsplit(":", 1)[1]
            if unit.isdigit():
                taken[int(unit)] = str(doc.get("holder", ""))
        return taken

    async def _resync(self) -> None:
        """After a lapse (or at start) learn which units this replica really holds."""
        for pool in self.pools.values():
            taken = await self._holders(pool)
            pool.held = {u for u, h in taken.items() if h == self.replicas.me and u < pool.size}

    async def release_all(self) -> None:
        for pool in self.pools.values():
            await self._release(pool, list(pool.held))


class RateTurns:
    """Turns of one rate (``per_second`` calls a second across all replicas): wait for the next turn whose
    phase this replica holds. Turns are spaced by ``slack / per_second`` on the wall clock."""

    def __init__(self, shares: Shares, pool: Pool, per_second: float, *, slack: float = 1.05) -> None:
        self.shares = shares
        self.pool = pool
        self.period = slack / per_second
        self._next = 0

    async def turn(self) -> None:
        pool = self.pool
        pool.last_wanted = time.monotonic()
        pool.waiting += 1
        try:
            while not (self.shares.usable and pool.held):
                self.shares.poke()
                await self.shares.changed.wait(PERIOD_S)
        finally:
            pool.waiting -= 1
        number = max(math.ceil(time.time() / self.period), self._next)
        for step in range(PHASES):
            if (number + step) % PHASES in pool.held:
                number += step
                break
        self._next = number + 1
        phase = number % PHASES
        pool.use(phase)  # a phase with a turn pending is never given back
        try:
            await asyncio.sleep(max(0.0, number * self.period - time.time()))
        finally:
            pool.done(phase)
