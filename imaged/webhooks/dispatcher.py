"""The webhook dispatcher: what imaged calls to have a task's events POSTed, signed, to its webhook.

``enqueue`` puts a delivery on the durable queue (``queue.py``); the consumer makes an attempt (``sender.py``),
records it (``attempts.py``) and, when it failed, sends the delivery to wait in the broker for the next one
(``schedule.py``). A delivery ends delivered (2xx), refused (the URL may not be reached: never retried) or given
up (still failing ``IMAGED_WEBHOOK_RETRY_S`` after its first attempt).

Delivery is at least once: a crash between an attempt and its acknowledgement repeats the attempt, and an event
imaged publishes again (a terminal event after a redelivery) is delivered again; every copy carries the same
``webhook-id`` (the event id), by which receivers drop duplicates. The events of a task are not delivered in
order: a retry of one may arrive after a later event (receivers order them by ``seq``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from ..broker import Consumer, Topology, settle
from ..contract import TERMINAL_WEBHOOK_EVENTS
from ..metrics import Metrics
from ..netguard import RefusedURL, check_url
from ..provenance import LaneSigner
from ..redact import Redactor
from ..retry import CRASHED, OUTAGE
from ..task import Task
from .attempts import AttemptLog, Outcome, shown_url
from .queue import Delivery, WebhookQueue
from .schedule import next_wait
from .sender import AttemptResult, Result, Sender
from .settings import WebhookSettings

log = logging.getLogger(__name__)

#: a delivery handed back this often without an outcome (each replica stopping, or dying, mid-attempt) ends
#: as given up; below RabbitMQ 4's default delivery limit of quorum queues (20), which would drop it unrecorded
MAX_DELIVERY_COUNT = 10
#: tries to record an attempt while the database is away, before the record is given up (never the delivery)
RECORD_TRIES = 5


def event_name(event: dict[str, Any]) -> str:
    """What ``webhook.events`` names an event by: its type without ``task.`` (so ``progress`` is its own)."""
    kind = event.get("type")
    if isinstance(kind, str) and kind.startswith("task."):
        return kind.removeprefix("task.")
    return str(event.get("status"))


class WebhookDispatcher:
    """Durable, signed webhook deliveries of task events. One per daemon (``start``/``stop``); the command line
    opens one without consuming (``open``/``close``) to replay."""

    def __init__(
        self,
        settings: WebhookSettings,
        broker_url: str,
        topology: Topology,
        db: AsyncDatabase[dict[str, Any]],
        metrics: Metrics | None,
        redactor: Redactor,
    ) -> None:
        self.settings = settings
        self.broker_url = broker_url
        self.topology = topology
        self.db = db
        self.metrics = metrics
        self.redactor = redactor
        self.log = AttemptLog(db, redactor)
        self.sender = Sender(
            settings.policy(),
            settings.secret_key(),
            redactor,
            timeout_s=settings.timeout_s,
            max_response_bytes=settings.max_response_bytes,
        )
        self.queue: WebhookQueue | None = None
        #: keys the digests of the URLs that are stored and logged (set by ``open``)
        self._url_key = b""
        self._inflight: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # ------------------------------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect and declare the queues and indexes, without consuming (what ``replay`` needs)."""
        if self.queue is not None:
            return
        shared = await LaneSigner.load(self.db["internal"])
        self._url_key = shared.derived_key(b"webhook-urls")
        queue = WebhookQueue(self.broker_url, self.topology, LaneSigner(shared.derived_key(b"webhook-queue")))
        await queue.connect()
        self.queue = queue
        await self.log.ensure_indexes()

    async def start(self) -> None:
        """Declare the queues, then consume and deliver."""
        await self.open()
        assert self.queue is not None
        await self.sender.open()
        self._stopping = False
        await self.queue.consume(self._on_message, self.settings.concurrency)
        if self.settings.secret is None:
            log.warning(
                "IMAGED_WEBHOOK_SECRET is not set: webhook deliveries are refused (nothing goes unsigned)"
            )
        log.info("webhooks: delivering to %s", self.settings.policy().describe())

    async def stop(self) -> None:
        """Stop consuming; attempts in flight finish (within the timeout of one attempt), anything else goes back
        to the queue unacknowledged: nothing is lost."""
        self._stopping = True
        if self.queue is not None:
            await self.queue.stop_consuming()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.timeout_s + 5)
            for task in pending:
                task.cancel()  # its message is not acknowledged: it is delivered again
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.close()

    async def close(self) -> None:
        if self.queue is not None:
            queue, self.queue = self.queue, None
            await queue.close()
        await self.sender.close()

    @property
    def consumers(self) -> list[Consumer]:
        """The consumers to keep alive (the daemon's connection watch calls their ``ensure``)."""
        consumer = self.queue.consumer if self.queue is not None else None
        return [consumer] if consumer is not None else []

    def _require_queue(self) -> WebhookQueue:
        if self.queue is None:
            raise RuntimeError("the webhook dispatcher is not open")
        return self.queue

    # ---------------------------------------------------------------------------------------------- seam

    def target(self, task: Task, event: dict[str, Any]) -> str | None:
        """The URL an event of ``task`` goes to: the request's webhook if it names the event; without one, the
        owner's default URL for terminal events; else None."""
        name = event_name(event)
        hook = task.webhook
        if hook:
            url, events = hook.get("url"), hook.get("events") or TERMINAL_WEBHOOK_EVENTS
            return url if isinstance(url, str) and name in events else None
        if task.owner is not None and name in TERMINAL_WEBHOOK_EVENTS:
            return self.settings.tenant_urls.get(task.owner)
        return None

    def check_url(self, url: str) -> None:
        """Refuse (ValueError, a message fit to show the publisher) a request's webhook that could never be
        delivered: no signing secret here, or a URL the network policy refuses. A host name passes; its
        addresses are checked at each attempt."""
        if self.settings.secret is None:
            raise ValueError("this imaged has no IMAGED_WEBHOOK_SECRET, so it delivers no webhooks")
        try:
            check_url(url, self.settings.policy())
        except RefusedURL as exc:
            raise ValueError(exc.message) from None

    async def enqueue(self, task: Task, event: dict[str, Any]) -> None:
        """Queue the delivery of an event just published, if the task's webhook (or its owner's default) wants it.
        Returns once the broker has it; raises if the broker fails (the caller retries)."""
        url = self.target(task, event)
        if url is None:
            return
        body = json.dumps(event, ensure_ascii=False)
        await self._require_queue().publish(
            Delivery.new(task.id, event["event_id"], event_name(event), url, body)
        )

    async def attempts(self, task_id: str) -> list[dict[str, Any]]:
        """A task's attempts, oldest first."""
        return await self.log.for_task(task_id)

    async def replay(self, task_id: str, event_id: str | None = None) -> int:
        """Deliver again each event of a task that was attempted (or only ``event_id``), with the same body and
        ``webhook-id``, to the URL the task names now; a new retry window. Returns how many were queued."""
        doc = await self.db["tasks"].find_one({"_id": task_id})
        if doc is None:
            return 0
        task = Task.from_doc(doc)
        queued = 0
        for latest in await self.log.latest_per_event(task_id, event_id):
            url = self.target(task, {"type": f"task.{latest['event']}", "status": latest["event"]})
            if url is None:
                log.warning("no webhook URL for event %s any more: not replayed", latest["event_id"])
                continue
            delivery = Delivery.new(task_id, latest["event_id"], latest["event"], url, latest["body"])
            await self._require_queue().publish(delivery)
            queued += 1
        return queued

    # ------------------------------------------------------------------------------------------ consumer

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await settle(message, ack=False)  # taken while stopping: back to the queue at once
            return
        current = asyncio.current_task()
        if current is not None:
            self._inflight.add(current)
        try:
            await self._handle(message)
        finally:
            if current is not None:
                self._inflight.discard(current)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        queue = self._require_queue()
        delivery = queue.read(message)
        if delivery is None:
            log.warning("dropping a message on %s that imaged did not sign", self.topology.webhooks)
            await settle(message, ack=True)
            return
        try:
            if _delivery_count(message) >= MAX_DELIVERY_COUNT:
                failed = AttemptResult(
                    Result.FAILED, error=f"handed back {MAX_DELIVERY_COUNT} times without an outcome"
                )
                await self._record(delivery, Outcome.GAVE_UP, failed)
            else:
                await self._attempt(queue, delivery)
        except Exception:
            log.exception("webhook delivery %s interrupted; it goes back to the queue", delivery.delivery_id)
            await CRASHED.wait(0)  # a pause, so that a persistent fault cannot loop hot
            await settle(message, ack=False)
            return
        await settle(message, ack=True)

    async def _attempt(self, queue: WebhookQueue, delivery: Delivery) -> None:
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = time.time()
        result = await self.sender.send(delivery.url, delivery.event_id, delivery.body.encode())
        wait = None
        if result.result is Result.DELIVERED:
            outcome = Outcome.DELIVERED
        elif result.result is Result.REFUSED:
            outcome = Outcome.REFUSED
        else:
            remaining = delivery.first_attempt_at + self.settings.retry_s - time.time()
            if not delivery.final:
                wait = next_wait(
                    delivery.attempt, remaining, self.settings.first_retry_s, self.topology.WEBHOOK_WAIT_TIERS
                )
            outcome = Outcome.RETRY if wait is not None else Outcome.GAVE_UP
        next_at = None if wait is None else datetime.fromtimestamp(time.time() + wait.seconds, UTC)
        await self._record(delivery, outcome, result, next_at)
        if wait is not None:
            follow = replace(delivery, attempt=delivery.attempt + 1, final=wait.final)
            await queue.publish(follow, wait_tier=wait.tier, wait_s=wait.seconds)

    async def _record(
        self, delivery: Delivery, outcome: Outcome, result: AttemptResult, next_at: datetime | None = None
    ) -> None:
        """Record an attempt (count it, log it). A database that stays away costs the record, not the delivery:
        an attempt is never made again only because its record could not be written."""
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(outcome.value).inc()
        where = shown_url(delivery.url, self._url_key)
        fields = {"task_id": delivery.task_id, "event_id": delivery.event_id, "attempt": delivery.attempt}
        what = f"status {result.status}" if result.status is not None else result.error
        if outcome in (Outcome.GAVE_UP, Outcome.REFUSED):
            log.warning(
                "webhook %s to %s: %s (%s)", delivery.event_id, where, outcome.value, what, extra=fields
            )
        else:
            log.info("webhook %s to %s: %s (%s)", delivery.event_id, where, outcome.value, what, extra=fields)
        for attempt in range(RECORD_TRIES):
            try:
                await self.log.record(
                    task_id=delivery.task_id,
                    event_id=delivery.event_id,
                    event=delivery.event,
                    delivery_id=delivery.delivery_id,
                    url=where,
                    attempt=delivery.attempt,
                    outcome=outcome,
                    body=delivery.body,
                    status=result.status,
                    error=result.error,
                    latency_ms=result.latency_ms,
                    next_attempt_at=next_at,
                )
                return
            except PyMongoError as exc:
                if attempt + 1 == RECORD_TRIES:
                    log.error("webhook attempt not recorded (database: %s)", type(exc).__name__, extra=fields)
                    return
                await OUTAGE.wait(attempt)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How often the broker handed this message out before (quorum queues count it in ``x-delivery-count``)."""
    value = (message.headers or {}).get("x-delivery-count")
    return value if isinstance(value, int) else 0
