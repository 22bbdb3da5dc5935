"""When a failed delivery is tried again: exponential backoff in fixed tiers, within a deadline.

Waiting happens in the broker (``queue.py``): a delivery to retry goes to the wait queue of its tier, expires
there and comes back to the queue of due deliveries. A queue expires messages only at its head, so each tier
holds messages that all wait the same time (else a short wait would sit behind a long one). The tiers are
``first_retry_s * 4**k``: by default 5 s, 20 s, 80 s, 5 min, 21 min, 85 min and 5.7 h, the last one repeated.

Deliveries are retried until ``retry_s`` after their first attempt. When the tier that is due would pass that
deadline, one last attempt is made after the longest tier that still fits, and its failure ends the delivery;
nothing fits: the delivery ends now.
"""

from __future__ import annotations

from dataclasses import dataclass

FACTOR = 4.0


def tier_delay(first_retry_s: float, tier: int) -> float:
    """How long a delivery waits in tier ``tier``."""
    return first_retry_s * FACTOR**tier


@dataclass(frozen=True)
class Wait:
    """The wait before the next attempt: in this tier, for this long; ``final``: that attempt is the last."""

    tier: int
    seconds: float
    final: bool


def next_wait(failed_attempts: int, remaining_s: float, first_retry_s: float, tiers: int) -> Wait | None:
    """The wait after ``failed_attempts`` failures with ``remaining_s`` left before the deadline; None: give up."""
    due = min(max(failed_attempts, 1) - 1, tiers - 1)
    if tier_delay(first_retry_s, due) <= remaining_s:
        return Wait(due, tier_delay(first_retry_s, due), final=False)
    for tier in range(due - 1, -1, -1):
        if tier_delay(first_retry_s, tier) <= remaining_s:
            return Wait(tier, tier_delay(first_retry_s, tier), final=True)
    return None
