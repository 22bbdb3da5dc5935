"""Provider limits per credential: tasks in flight (slots) and submit rate.

This module holds the in-process implementation; the seam (``SlotPool.slot``) is what jobs depend on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from .providers.base import Credential


class RateLimiter:
    """At most ``per_second`` calls per second, spaced evenly (no bursts: providers count per second)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class SlotPool:
    """Hands out one credential slot per running task; waits when every credential is at its cap."""

    def __init__(self, credentials: list[Credential], submit_per_second: float) -> None:
        if not credentials:
            raise ValueError("a slot pool needs at least one credential")
        self.credentials = credentials
        self._free = {c.name: c.max_in_flight for c in credentials}
        self._changed = asyncio.Condition()
        self._rates = {c.name: RateLimiter(submit_per_second) for c in credentials}
        self._turn = 0

    @property
    def capacity(self) -> int:
        return sum(c.max_in_flight for c in self.credentials)

    def in_use(self, credential: str) -> int:
        cred = next(c for c in self.credentials if c.name == credential)
        return cred.max_in_flight - self._free[credential]

    def credential(self, name: str | None) -> Credential | None:
        return next((c for c in self.credentials if c.name == name), None)

    async def _acquire(self, preferred: str | None) -> Credential:
        async with self._changed:
            while True:
                if preferred is not None and self._free.get(preferred, 0) > 0:
                    self._free[preferred] -= 1
                    return next(c for c in self.credentials if c.name == preferred)
                if preferred is None or preferred not in self._free:
                    # Round-robin over credentials with room, so load spreads.
                    for offset in range(len(self.credentials)):
                        cred = self.credentials[(self._turn + offset) % len(self.credentials)]
                        if self._free[cred.name] > 0:
                            self._free[cred.name] -= 1
                            self._turn = (self._turn + offset + 1) % len(self.credentials)
                            return cred
                await self._changed.wait()

    async def _release(self, cred: Credential) -> None:
        async with self._changed:
            self._free[cred.name] += 1
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self, preferred: str | None = None) -> AsyncIterator[Credential]:
        """Hold a slot for the block. ``preferred`` pins a task that already runs on a credential to it."""
        cred = await self._acquire(preferred)
        try:
            yield cred
        finally:
            await asyncio.shield(self._release(cred))

    async def before_submit(self, cred: Credential) -> None:
        await self._rates[cred.name].wait()
