"""Task events as this process hears them on the broker, for the HTTP event streams.

While at least one stream is open, the process listens on the events exchange with a queue of its own (so events
of tasks other replicas drive arrive too) and hands each event to the streams of its task. With no stream open it
does not listen: the hot path pays nothing for a feature nobody uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from .broker import Broker, json_object
from .diagnose import BROKER_ERRORS

log = logging.getLogger(__name__)

#: events a slow stream may fall behind by before it is dropped
STREAM_BACKLOG = 1000
#: starting to listen waits this long for the broker at most
LISTEN_TIMEOUT_S = 10.0


class EventsUnavailable(Exception):
    """The broker could not be listened to: no live events now."""


class EventHub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.streams: dict[str, set[asyncio.Queue[dict[str, Any] | None]]] = {}
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def subscribe(self, task_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        """The events of one task from now on; ``None`` in the queue means the stream fell too far behind."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=STREAM_BACKLOG)
        async with self._lock:
            if not self.streams:
                try:
                    async with asyncio.timeout(LISTEN_TIMEOUT_S):
                        await self._listen()
                except BROKER_ERRORS as exc:  # a timeout among them
                    await self._stop()
                    raise EventsUnavailable(f"the broker is not available ({type(exc).__name__})") from None
            self.streams.setdefault(task_id, set()).add(queue)
        try:
            yield queue
        finally:
            async with self._lock:
                streams = self.streams.get(task_id, set())
                streams.discard(queue)
                if not streams:
                    self.streams.pop(task_id, None)
                if not self.streams:
                    await self._stop()

    async def _listen(self) -> None:
        self._channel = await self.broker.open_consumer_channel(prefetch=STREAM_BACKLOG)
        await self.broker.listen_events(self._channel, self._on_event)

    async def _stop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = json_object(message.body)
        task_id = event.get("task_id") if event is not None else None
        for queue in self.streams.get(task_id, ()) if isinstance(task_id, str) else ():
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("an event stream fell behind and is closed", extra={"task_id": task_id})
                queue.get_nowait()
                queue.put_nowait(None)
