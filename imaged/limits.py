"""Provider limits per credential, held across every replica: tasks in flight, submit rate and poll rate.

Each limit is a pool of ``shares.py``: in-flight slots are units of a pool as large as the credential's cap,
submit and poll turns are the phases of a rate pool. A task takes a slot and waits for its turns in memory only;
the replicas trade units among themselves in the background. A credential that answers with an auth or quota
error leaves the rotation for a cool-down period and is reported.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .contract import ErrorCategory
from .errors import TaskError
from .metrics import Metrics
from .providers.base import Credential
from .shares import PERIOD_S, PHASES, Pool, RateTurns, Shares

log = logging.getLogger(__name__)


@dataclass
class CredentialLimits:
    """The pools of one credential."""

    credential: Credential
    slots: Pool
    submits: RateTurns
    polls: RateTurns | None


class ProviderLimits:
    """Slots, rates and rotation of one provider's credentials."""

    def __init__(
        self,
        shares: Shares,
        provider: str,
        credentials: list[Credential],
        submit_per_second: float,
        *,
        poll_per_second: float | None = None,
        cooldown_s: float = 600.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not credentials:
            raise ValueError("provider limits need at least one credential")
        self.shares = shares
        self.provider = provider
        self.credentials = credentials
        self.cooldown_s = cooldown_s
        self.metrics = metrics
        self.disabled: dict[str, tuple[float, TaskError]] = {}  # name -> (until, why)
        self._turn = 0
        self.limits: dict[str, CredentialLimits] = {}
        for cred in credentials:
            base = f"{provider}:{cred.name}"
            self.limits[cred.name] = CredentialLimits(
                cred,
                shares.pool(f"slot:{base}", cred.max_in_flight),
                RateTurns(shares, shares.pool(f"submit:{base}", PHASES, rate=True), submit_per_second),
                RateTurns(shares, shares.pool(f"poll:{base}", PHASES, rate=True), poll_per_second)
                if poll_per_second
                else None,
            )
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

    def _take(self, order: list[Credential]) -> tuple[Credential, int] | None:
        if not self.shares.usable:
            return None
        for cred in order:
            unit = self.limits[cred.name].slots.take_idle()
            if unit is not None:
                return cred, unit
        return None

    @contextlib.asynccontextmanager
    async def slot(self, preferred: str | None = None) -> AsyncIterator[Credential]:
        """Hold one in-flight slot of a credential for the block (``preferred`` pins a submitted task)."""
        while (got := self._take(order := self._order(preferred))) is None:
            pools = [self.limits[c.name].slots for c in order]
            for pool in pools:
                pool.waiting += 1
            try:
                self.shares.poke()
                await self.shares.changed.wait(PERIOD_S)
            finally:
                for pool in pools:
                    pool.waiting -= 1
        cred, unit = got
        pool = self.limits[cred.name].slots
        gauge = self.metrics.slots_in_use.labels(self.provider, cred.name) if self.metrics else None
        if gauge is not None:
            gauge.inc()
        try:
            yield cred
        finally:
            if gauge is not None:
                gauge.dec()
            pool.done(unit)
            self.shares.changed.fire()

    # -- rates --------------------------------------------------------------------------------------------------

    async def before_submit(self, cred: Credential) -> None:
        await self.limits[cred.name].submits.turn()

    async def before_poll(self, cred: Credential) -> None:
        polls = self.limits[cred.name].polls
        if polls is not None:
            await polls.turn()
