"""Provider limits per credential, held across every replica: tasks in flight (slots) and submit rate.

Both are built on leases (see ``leases.py``): a slot is a lease ``slot:<provider>:<credential>:<n>`` for n below the
credential's cap; a submit turn is a lease on a future time bucket, so submits are spaced by ``1 / rate`` however
many replicas compete.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator

from .leases import Leases
from .providers.base import Credential


class ProviderSlots:
    """Provider slots and submit rates per credential, enforced across every replica through leases."""

    def __init__(
        self, leases: Leases, provider: str, credentials: list[Credential], submit_per_second: float
    ) -> None:
        if not credentials:
            raise ValueError("provider slots need at least one credential")
        self.leases = leases
        self.provider = provider
        self.credentials = credentials
        self.submit_per_second = submit_per_second
        self._turn = 0
        self._released = asyncio.Event()

    @property
    def capacity(self) -> int:
        return sum(c.max_in_flight for c in self.credentials)

    def credential(self, name: str | None) -> Credential | None:
        return next((c for c in self.credentials if c.name == name), None)

    def _order(self, preferred: str | None) -> list[Credential]:
        pinned = self.credential(preferred)
        if pinned is not None:
            return [pinned]  # a task that already runs on a credential stays on it
        start = self._turn % len(self.credentials)
        self._turn += 1
        return self.credentials[start:] + self.credentials[:start]

    async def _try_once(self, holder: str, preferred: str | None) -> tuple[Credential, str] | None:
        for cred in self._order(preferred):
            for index in range(cred.max_in_flight):
                key = f"slot:{self.provider}:{cred.name}:{index}"
                if await self.leases.try_acquire(key, holder):
                    return cred, key
        return None

    @contextlib.asynccontextmanager
    async def slot(self, holder: str, preferred: str | None = None) -> AsyncIterator[Credential]:
        """Hold one in-flight slot of a credential for the block."""
        delay = 0.2
        while (got := await self._try_once(holder, preferred)) is None:
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 1.5, 2.0)
        cred, key = got
        try:
            yield cred
        finally:
            await asyncio.shield(self.leases.release_quietly(key, holder))
            self._released.set()

    async def before_submit(self, cred: Credential) -> None:
        """Wait for a submit turn: each turn is a future time bucket claimed by insert, so replicas never collide."""
        # A little slack, so that network jitter never lands two submits inside the provider's one-second window.
        period = 1.05 / self.submit_per_second
        bucket = math.floor(time.time() / period) + 1
        holder = f"{self.leases.holder_prefix}:{secrets.token_hex(4)}"
        while not await self.leases.try_acquire(
            f"rate:{self.provider}:{cred.name}:{bucket}", holder, renew=False, ttl_s=period + 1.0
        ):
            bucket += 1
        await asyncio.sleep(max(0.0, bucket * period - time.time()))
