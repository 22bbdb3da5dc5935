"""Task events: built from the task, numbered per task, published with broker confirms.

Sequence numbers are kept by whoever holds the task (intake for ``task.pending``, then the job that holds its
claim) and stored with the status change they belong to; progress events are numbered in memory only. A terminal
event is stored on the task before it is published, so a re-publish after a crash or redelivery sends the very
same event (same ``event_id``).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from typing import Any, Protocol

from .broker import Broker
from .contract import ErrorInfo, Event, Result, Status, utcnow
from .store import TaskStore
from .task import Task

log = logging.getLogger(__name__)

#: how long a non-terminal event's webhook may take to queue before it is skipped (the task does not wait longer)
NON_TERMINAL_ENQUEUE_S = 5.0


class EventSink(abc.ABC):
    """Where events go. The daemon publishes to RabbitMQ; unit tests collect them in memory."""

    @abc.abstractmethod
    async def publish(self, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        """Deliver an event (confirmed); a terminal one also goes to ``reply_to``."""


class BrokerEvents(EventSink):
    """Events on the topic exchange ``<prefix>.events`` with routing key ``task.<status>``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._own_queues = f"{broker.topology.prefix}."

    async def publish(self, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        body = json.dumps(event, ensure_ascii=False).encode()
        headers = {
            "task_id": event["task_id"],
            "provider": event["provider"],
            "model": event["model"],
            "status": event["status"],
        }
        await self.broker.publish_event(
            body, event["type"], headers, event["event_id"], event.get("correlation_id")
        )
        # Never into imaged's own queues: a reply there would be read back as work.
        if reply_to and Status(event["status"]).terminal and not reply_to.startswith(self._own_queues):
            await self.broker.publish_to_queue(
                reply_to,
                body,
                message_id=event["event_id"],
                correlation_id=event.get("correlation_id"),
                headers=headers,
            )


def build_event(
    task: Task,
    status: Status,
    *,
    event_type: str | None = None,
    progress: float | None = None,
    result: Result | None = None,
    error: ErrorInfo | None = None,
) -> dict[str, Any]:
    """The event with the task's current sequence number, as a JSON-ready dict."""
    event = Event(
        event_id=f"{task.id}:{task.seq}",
        type=event_type or f"task.{status.value}",
        seq=task.seq,
        occurred_at=utcnow(),
        task_id=task.id,
        status=status,
        model=task.model,
        provider=task.provider,
        correlation_id=task.correlation_id,
        metadata=task.metadata,
        progress=progress if progress is not None else (1.0 if status.terminal else task.progress),
        result=result,
        error=error,
    )
    return event.model_dump(mode="json")


class WebhookQueue(Protocol):
    """Where an event also goes when its task has a webhook (``WebhookDispatcher.enqueue``)."""

    async def enqueue(self, task: Task, event: dict[str, Any]) -> None: ...


class EventPublisher:
    """Numbers, stores (terminal ones) and sends the events of tasks, and queues their webhook deliveries.

    A delivery is queued after the event is published, both confirmed: whatever re-publishes a terminal event
    after a failure (a redelivery does) queues its delivery again, with the same ``webhook-id``. A non-terminal
    event's delivery that cannot be queued is skipped with a warning, never failing the task.
    """

    def __init__(self, sink: EventSink, store: TaskStore, webhooks: WebhookQueue | None = None) -> None:
        self.sink = sink
        self.store = store
        self.webhooks = webhooks

    async def _send(self, task: Task, event: dict[str, Any]) -> None:
        await self.sink.publish(event, reply_to=task.reply_to)
        if self.webhooks is None:
            return
        if Status(event["status"]).terminal:
            await self.webhooks.enqueue(task, event)  # raises: the caller's retry sends the event again
            return
        try:
            async with asyncio.timeout(NON_TERMINAL_ENQUEUE_S):
                await self.webhooks.enqueue(task, event)
        except Exception as exc:  # noqa: BLE001 - the task goes on; only its progress webhook is skipped
            # Non-terminal events are not stored, so no retry would send them again: never let their webhook
            # hold up (or strand) the task itself.
            log.warning(
                "webhook of %s not queued (%s): skipped",
                event["type"],
                type(exc).__name__,
                extra={"task_id": task.id},
            )

    def next_event(self, task: Task, status: Status, **kwargs: Any) -> dict[str, Any]:
        """Take the task's next sequence number (in memory) and build its event."""
        task.seq += 1
        return build_event(task, status, **kwargs)

    async def publish(self, task: Task, event: dict[str, Any]) -> None:
        await self._send(task, event)

    async def emit(self, task: Task, status: Status, **kwargs: Any) -> dict[str, Any]:
        """Build and publish a non-terminal event."""
        event = self.next_event(task, status, **kwargs)
        await self._send(task, event)
        return event

    async def finish(
        self, task: Task, status: Status, *, result: Result | None = None, error: ErrorInfo | None = None
    ) -> Task:
        """Store a terminal state together with its event, then publish the event (confirmed by the broker).

        The stored event is what a redelivery re-publishes, so every copy carries the same ``event_id``.
        """
        event = self.next_event(task, status, result=result, error=error)
        now = utcnow()
        fields = {
            "result": result.model_dump(mode="json") if result else None,
            "error": error.model_dump(mode="json") if error else None,
            "finished_at": now,
            "progress": event["progress"],
            "terminal_event": event,
            "seq": task.seq,
        }
        await self.store.save(task.id, fields, status=status)
        task.status = status
        task.result, task.error = fields["result"], fields["error"]
        task.finished_at, task.progress, task.terminal_event = now, event["progress"], event
        await self._send(task, event)
        return task

    async def republish(self, task: Task) -> None:
        """Send a terminal task's stored event again (same ``event_id``); store one first if it is missing."""
        if task.terminal_event is not None:
            await self._send(task, task.terminal_event)
            return
        error = ErrorInfo.model_validate(task.error) if task.error else None
        result = Result.model_validate(task.result) if task.result else None
        await self.finish(task, task.status, result=result, error=error)
