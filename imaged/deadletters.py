"""Dead letters the broker made (delivery limit reached, message expired) become failed tasks with their event.

The dead-letter exchange fans out to ``<prefix>.dead`` (kept for operators: ``imaged dead list|replay``) and to
``<prefix>.dead.watch``, consumed here. Messages imaged dead-lettered itself carry ``x-imaged-reason`` and were
recorded when they were rejected, so they are only acknowledged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from .broker import Broker, settle
from .claims import Claims, ClaimState
from .contract import ErrorCategory, ErrorInfo, Status
from .events import EventPublisher
from .intake import Intake
from .metrics import Metrics
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
        metrics: Metrics,
    ) -> None:
        self.broker = broker
        self.claims = claims
        self.store = store
        self.events = events
        self.intake = intake
        self.metrics = metrics

    async def handle(self, message: AbstractIncomingMessage) -> None:
        death = death_of(message)
        if death is None or "x-imaged-reason" in (message.headers or {}):
            await settle(message, ack=True)  # imaged's own dead letter: already recorded
            return
        reason, queue = death
        self.metrics.dead_letters.labels(
            reason if reason in ("expired", "delivery_limit") else "broker"
        ).inc()
        task_id = self._task_id(message, queue)
        if task_id is not None:
            await self._fail(message, task_id, reason, queue)
        await settle(message, ack=True)

    def _task_id(self, message: AbstractIncomingMessage, queue: str) -> str | None:
        if queue == self.broker.topology.requests:
            return self.intake.known_task_id(message)
        try:
            value = json.loads(message.body).get("task_id")
        except (ValueError, AttributeError, RecursionError):
            return None
        return value if isinstance(value, str) else None

    async def _fail(self, message: AbstractIncomingMessage, task_id: str, reason: str, queue: str) -> None:
        if reason == "expired":
            error = ErrorInfo(
                category=ErrorCategory.TIMEOUT,
                code="expired",
                message="the request expired in the queue before it was processed; it was never submitted",
            )
        else:
            error = ErrorInfo(
                category=ErrorCategory.INTERNAL,
                code=reason or "dead_lettered",
                message=f"the broker dead-lettered the message ({reason}) from {queue}",
            )
        task = await self.store.get(task_id)
        if task is None:
            await self.intake.record_failure(message, task_id, error)
        elif task.terminal:
            await self.events.republish(task)  # its event may not have gone out before the message died
            return
        else:
            # A job still driving the task (its message died under it, e.g. channels dropping) finishes it itself.
            claim = await self.claims.take(task_id, ClaimState.CLAIMED, reentrant=False)
            if not claim.taken:
                return
            latest = await self.store.get(task_id) or task
            if not latest.terminal:
                await self.events.finish(latest, Status.FAILED, error=error)
        log.warning("task failed: %s", error.message, extra={"task_id": task_id, "code": error.code})
