"""Retry policies, named and in one place: capped exponential backoff with jitter, ``Retry-After`` and attempts.

Every loop in imaged that waits before trying again uses one of these. ``set_testing(True)`` removes the waits
(attempts still count), so that tests of retry behaviour run in milliseconds.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

_testing = False


def set_testing(enabled: bool) -> None:
    """Turn every retry wait into no wait at all (for tests); attempts are still counted."""
    global _testing
    _testing = enabled


def testing() -> bool:
    return _testing


@dataclass(frozen=True)
class Policy:
    """How to wait between attempts. ``attempts`` None means: until the caller's own deadline."""

    name: str
    base_s: float
    cap_s: float
    attempts: int | None = None
    #: "full": uniform in [0, backoff]; "half": uniform in [backoff/2, backoff]
    jitter: str = "full"

    def backoff(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 30))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``; a provider's ``Retry-After`` wins (within reason)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s * 4)
        high = self.backoff(attempt)
        low = high / 2 if self.jitter == "half" else 0.0
        return random.uniform(low, high)

    def exhausted(self, attempt: int) -> bool:
        """Whether ``attempt`` failed attempts use up the policy."""
        return self.attempts is not None and attempt >= self.attempts

    async def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before the next attempt; returns the seconds it meant to wait."""
        seconds = self.delay(attempt, retry_after)
        await asyncio.sleep(0 if _testing else seconds)
        return seconds


#: a provider call that failed in a way worth another try (429, 5xx, a reset, a timeout)
PROVIDER_CALL = Policy("provider_call", base_s=0.5, cap_s=30.0)
#: an image download; never by generating again
DOWNLOAD = Policy("download", base_s=0.5, cap_s=30.0, attempts=6)
#: the broker or the database is away: wait with patience
OUTAGE = Policy("outage", base_s=0.5, cap_s=30.0, jitter="half")
#: the database is up but momentarily contended (FerretDB's locked SQLite): retry within milliseconds
BUSY = Policy("busy", base_s=0.05, cap_s=2.0, jitter="half")
#: a job that crashed: a pause before its message goes back, so that a poison task cannot loop hot
CRASHED = Policy("crashed", base_s=1.0, cap_s=1.0, jitter="half")
