"""Task events: built from the stored task, numbered per task, published with broker confirms.

A terminal event is stored on the task before it is published, so a re-publish after a crash or redelivery sends
the very same event (same ``event_id``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .broker import Broker
from .contract import ErrorInfo, Event, Result, Status, utcnow
from .store import TaskDoc, TaskStore

log = logging.getLogger(__name__)


class EventPublisher:
    """Emits ``task.<status>`` events on the events exchange (and terminal ones to ``reply_to``)."""

    def __init__(self, broker: Broker, store: TaskStore) -> None:
        self.broker = broker
        self.store = store
        self._own_queues = f"{broker.topology.prefix}."

    async def build(
        self,
        doc: TaskDoc,
        status: Status,
        *,
        event_type: str | None = None,
        progress: float | None = None,
        result: Result | None = None,
        error: ErrorInfo | None = None,
    ) -> dict[str, Any]:
        """A new event for the task with the next sequence number, as a JSON-ready dict."""
        seq = await self.store.next_seq(doc["_id"])
        event = Event(
            event_id=f"{doc['_id']}:{seq}",
            type=event_type or f"task.{status.value}",
            seq=seq,
            occurred_at=utcnow(),
            task_id=doc["_id"],
            status=status,
            model=doc["model"],
            provider=doc["provider"],
            correlation_id=doc.get("correlation_id"),
            metadata=doc.get("metadata") or {},
            progress=progress
            if progress is not None
            else (1.0 if status.terminal else doc.get("progress", 0.0)),
            result=result,
            error=error,
        )
        return event.model_dump(mode="json")

    async def publish(self, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        """Publish an event and wait for the broker's confirm; a terminal one also goes to ``reply_to``."""
        body = json.dumps(event, ensure_ascii=False).encode()
        headers = {
            "task_id": event["task_id"],
            "provider": event["provider"],
            "model": event["model"],
            "status": event["status"],
        }
        routing_key = event["type"]
        await self.broker.publish_event(
            body, routing_key, headers, event["event_id"], event.get("correlation_id")
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

    async def finish(
        self, doc: TaskDoc, status: Status, *, result: Result | None = None, error: ErrorInfo | None = None
    ) -> TaskDoc:
        """Store a terminal state together with its event, then publish the event (confirmed by the broker).

        The stored event is what a redelivery re-publishes, so every copy carries the same ``event_id``.
        """
        event = await self.build(doc, status, result=result, error=error)
        updated = await self.store.update(
            doc["_id"],
            {
                "result": result.model_dump(mode="json") if result else None,
                "error": error.model_dump(mode="json") if error else None,
                "finished_at": utcnow(),
                "progress": event["progress"],
                "terminal_event": event,
            },
            status=status,
        )
        await self.publish(event, reply_to=doc.get("reply_to"))
        return updated or doc

    async def republish(self, doc: TaskDoc) -> None:
        """Send a terminal task's stored event again (same ``event_id``); store one first if it is missing."""
        event = doc.get("terminal_event")
        if event is not None:
            await self.publish(event, reply_to=doc.get("reply_to"))
            return
        error = ErrorInfo.model_validate(doc["error"]) if doc.get("error") else None
        result = Result.model_validate(doc["result"]) if doc.get("result") else None
        await self.finish(doc, Status(doc["status"]), result=result, error=error)

    async def emit(self, doc: TaskDoc, status: Status, **kwargs: Any) -> dict[str, Any]:
        """Build and publish a non-terminal event."""
        event = await self.build(doc, status, **kwargs)
        await self.publish(event)
        return event
