"""Dead letters the broker made (delivery limit reached, message expired) become failed tasks with their event.

The dead-letter exchange fans out to ``<prefix>.dead`` (kept for operators: ``imaged dead list|replay``) and to
``<prefix>.dead.watch``, consumed here. Messages imaged dead-lettered itself carry ``x-imaged-reason`` and were
recorded when they were rejected, so they are only acknowledged.

Any publisher can put a message with an ``x-death`` header on that path, so a dead letter is believed only as
far as it can be checked:

- a lane message must carry imaged's own signature (``provenance.py``); then its task fails, unless it finished;
- a request that died before intake recorded it (expired in the queue, or crashing intake again and again) can
  only create a failed task under a task id nobody used yet; it never touches an existing task.

Anything else is logged and dropped (``imaged_dead_letters_total{reason="forged"}``).
"""

from __future__ import annotations

import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from .broker import Broker, json_object
from .claims import Claims, ClaimState
from .contract import ErrorCategory, ErrorInfo, Status
from .events import EventPublisher
from .intake import Intake
from .metrics import Metrics
from .provenance import SIGNATURE_HEADER, LaneSigner
from .store import TaskStore

log = logging.getLogger(__name__)


def death_of(message: AbstractIncomingMessage) -> tuple[str, str] | None:
    """(reason, queue) of the broker's latest dead-lettering of a message, from its ``x-death`` header."""
    deaths: Any = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    reason, queue = deaths[0].get("reason"), deaths[0].get("queue")
    text = [v.decode() if isinstance(v, bytes) else str(v or "") for v in (reason, queue)]
    return text[0], text[1]


class DeadLetterWatcher:
    """Consumer of ``<prefix>.dead.watch``."""

    def __init__(
        self,
        broker: Broker,
        store: TaskStore,
        events: EventPublisher,
        intake: Intake,
        claims: Claims,
        signer: LaneSigner,
        metrics: Metrics,
    ) -> None:
        self.broker = broker
        self.claims = claims
        self.store = store
        self.events = events
        self.intake = intake
        self.signer = signer
        self.metrics = metrics

    async def handle(self, message: AbstractIncomingMessage) -> None:
        death = death_of(message)
        if death is None or "x-imaged-reason" in (message.headers or {}):
            return  # imaged's own dead letter: recorded when it was rejected
        reason, queue = death
        topology = self.broker.topology
        if queue == topology.requests:
            await self._request_died(message, reason, queue)
        elif queue.startswith(f"{topology.prefix}.work."):
            await self._lane_message_died(message, reason, queue)
        else:
            self._forged(message, f"a dead letter of queue {queue!r}, which is not imaged's")

    def _count(self, reason: str) -> None:
        self.metrics.dead_letters.labels(
            reason if reason in ("expired", "delivery_limit") else "broker"
        ).inc()

    def _forged(self, message: AbstractIncomingMessage, why: str) -> None:
        self.metrics.dead_letters.labels("forged").inc()
        log.warning(
            "dropped a dead letter that imaged cannot believe: %s",
            why,
            extra={"message_id": (message.message_id or "")[:64], "user_id": message.user_id},
        )

    async def _request_died(self, message: AbstractIncomingMessage, reason: str, queue: str) -> None:
        """A request the broker gave up on: only a task id nobody used yet becomes a failed task."""
        task_id = self.intake.known_task_id(message)
        if task_id is None:
            self._count(reason)
            return
        existing = await self.store.get(task_id)
        if existing is not None and existing.owner != message.user_id:
            self._forged(message, f"a dead request naming task {task_id} of another owner")
            return
        self._count(reason)
        if existing is None:
            await self.intake.record_failure(message, task_id, _error(reason, queue))
            log.warning("task failed: its request died in the queue (%s)", reason, extra={"task_id": task_id})
        elif existing.terminal:
            await self.events.republish(existing)  # its event may not have gone out before it died
        else:
            # Anyone may publish a request (or a dead letter naming one), so a dead request never fails a task
            # that exists. Its request may have died between recording and forwarding, though: forward it
            # again. A copy of a lane message is harmless: the task's claim lets one job drive it.
            await self.intake.forward(existing, created=False)
            log.info("dead request of an existing task: forwarded it again", extra={"task_id": task_id})

    async def _lane_message_died(self, message: AbstractIncomingMessage, reason: str, queue: str) -> None:
        """A lane message the broker gave up on (its job crashed or was interrupted too often)."""
        if not self.signer.verify(message.body, (message.headers or {}).get(SIGNATURE_HEADER)):
            self._forged(message, "a lane message without imaged's signature")
            return
        task_id = (json_object(message.body) or {}).get("task_id")
        if not isinstance(task_id, str):
            return
        self._count(reason)
        task = await self.store.get(task_id)
        if task is None:
            return
        if task.terminal:
            await self.events.republish(task)  # its event may not have gone out before the message died
            return
        error = _error(reason, queue)
        if await self._finish(task_id, error):
            log.warning("task failed: %s", error.message, extra={"task_id": task_id, "code": error.code})

    async def _finish(self, task_id: str, error: ErrorInfo) -> bool:
        """Fail a task nobody drives (a job still driving it, e.g. after its channel dropped, finishes it)."""
        claim = await self.claims.take(task_id, ClaimState.CLAIMED, reentrant=False)
        if not claim.taken:
            return False
        latest = await self.store.get(task_id)
        if latest is None or latest.terminal:
            return False
        await self.events.finish(latest, Status.FAILED, error=error)
        return True


def _error(reason: str, queue: str) -> ErrorInfo:
    if reason == "expired":
        return ErrorInfo(
            category=ErrorCategory.TIMEOUT,
            code="expired",
            message="the request expired in the queue before it was processed; it was never submitted",
        )
    return ErrorInfo(
        category=ErrorCategory.INTERNAL,
        code=reason or "dead_lettered",
        message=f"the broker dead-lettered the message ({reason}) from {queue}",
    )
