"""Provider limits per credential, held across every replica: tasks in flight (slots), submit and poll rates.

Both are built on leases (see ``leases.py``): a slot is a lease ``slot:<provider>:<credential>:<n>`` for n below the
credential's cap; a submit (or poll) turn is a lease on a future time bucket, so calls are spaced by ``1 / rate``
however many replicas compete. A credential that answers with an auth or quota error leaves the rotation for a
cool-down period and is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator

from .contract import ErrorCategory
from .errors import TaskError
from .leases import Leases
from .metrics import Metrics
from .providers.base import Credential

log = logging.getLogger(__name__)

# Slack on every rate, so network jitter never lands two calls inside the provider's window.
RATE_SLACK = 1.05


class ProviderSlots:
    """Slots, rates and rotation of one provider's credentials."""

    def __init__(
        self,
        leases: Leases,
        provider: str,
        credentials: list[Credential],
        submit_per_second: float,
        *,
        poll_per_second: float | None = None,
        cooldown_s: float = 600.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not credentials:
            raise ValueError("provider slots need at least one credential")
        self.leases = leases
        self.provider = provider
        self.credentials = credentials
        self.submit_per_second = submit_per_second
        self.poll_per_second = poll_per_second
        self.cooldown_s = cooldown_s
        self.metrics = metrics
        self.disabled: dict[str, tuple[float, TaskError]] = {}  # name -> (until, why)
        self._turn = 0
        self._released = asyncio.Event()
        for cred in credentials:
            self._report(cred, up=True)

    @property
    def capacity(self) -> int:
        return sum(c.max_in_flight for c in self.credentials)

    def credential(self, name: str | None) -> Credential | None:
        return next((c for c in self.credentials if c.name == name), None)

    # -- rotation -----------------------------------------------------------------------------------------------

    def active(self) -> list[Credential]:
        now = time.monotonic()
        for name, (until, _) in list(self.disabled.items()):
            if until <= now:
                del self.disabled[name]
                log.info("credential %s of %s is back in rotation", name, self.provider)
                cred = self.credential(name)
                if cred is not None:
                    self._report(cred, up=True)
        return [c for c in self.credentials if c.name not in self.disabled]

    def take_out(self, cred: Credential, error: TaskError) -> None:
        """Remove a credential from the rotation after an auth or quota error."""
        self.disabled[cred.name] = (time.monotonic() + self.cooldown_s, error)
        self._report(cred, up=False)
        log.error(
            "credential %s of %s taken out of rotation for %.0fs: %s (%s)",
            cred.name,
            self.provider,
            self.cooldown_s,
            error.category.value,
            error.code,
        )

    def _report(self, cred: Credential, *, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.credential_up.labels(self.provider, cred.name).set(1 if up else 0)

    def status(self) -> dict[str, str]:
        active = {c.name for c in self.active()}
        return {c.name: "active" if c.name in active else "out of rotation" for c in self.credentials}

    def _order(self, preferred: str | None) -> list[Credential]:
        pinned = self.credential(preferred)
        if pinned is not None:
            return [pinned]  # a task already at the provider is polled with the credential that submitted it
        candidates = self.active()
        if not candidates:
            _, error = min(self.disabled.values(), key=lambda item: item[0])
            raise TaskError(
                f"every {self.provider} credential is out of rotation (last: {error.message})",
                category=error.category
                if error.category in (ErrorCategory.AUTH, ErrorCategory.QUOTA)
                else None,
                code="no_credential",
            )
        start = self._turn % len(candidates)
        self._turn += 1
        return candidates[start:] + candidates[:start]

    # -- slots --------------------------------------------------------------------------------------------------

    async def _try_once(self, holder: str, preferred: str | None) -> tuple[Credential, str] | None:
        for cred in self._order(preferred):
            for index in range(cred.max_in_flight):
                key = f"slot:{self.provider}:{cred.name}:{index}"
                if await self.leases.try_acquire(key, holder):
                    return cred, key
        return None

    @contextlib.asynccontextmanager
    async def slot(self, holder: str, preferred: str | None = None) -> AsyncIterator[Credential]:
        """Hold one in-flight slot of a credential for the block (``preferred`` pins a submitted task)."""
        delay = 0.2
        while (got := await self._try_once(holder, preferred)) is None:
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 1.5, 2.0)
        cred, key = got
        gauge = self.metrics.slots_in_use.labels(self.provider, cred.name) if self.metrics else None
        if gauge is not None:
            gauge.inc()
        try:
            yield cred
        finally:
            if gauge is not None:
                gauge.dec()
            await asyncio.shield(self.leases.release_quietly(key, holder))
            self._released.set()

    # -- rates --------------------------------------------------------------------------------------------------

    async def _turn_at(self, kind: str, cred: Credential, per_second: float) -> None:
        """Claim the next free future time bucket by insert, then sleep until it starts."""
        period = RATE_SLACK / per_second
        bucket = math.floor(time.time() / period) + 1
        holder = f"{self.leases.holder_prefix}:{secrets.token_hex(4)}"
        # A bucket's lease lives until its turn is over, however far ahead it was claimed.
        while not await self.leases.try_acquire(
            f"{kind}:{self.provider}:{cred.name}:{bucket}",
            holder,
            renew=False,
            ttl_s=(bucket + 1) * period - time.time() + 1.0,
        ):
            bucket += 1
        await asyncio.sleep(max(0.0, bucket * period - time.time()))

    async def before_submit(self, cred: Credential) -> None:
        await self._turn_at("rate", cred, self.submit_per_second)

    async def before_poll(self, cred: Credential) -> None:
        if self.poll_per_second:
            await self._turn_at("poll", cred, self.poll_per_second)
