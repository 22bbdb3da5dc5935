"""RabbitMQ: the topology of design.md §2, the connection, and confirmed publishing.

Every publish here waits for the broker's confirm, so "published" means "the broker has it".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika import DeliveryMode, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from .settings import Settings

log = logging.getLogger(__name__)

#: set on a lane message that intake forwards again for a task it had recorded already: the job must expect a
#: task another run may have started
RESUME_HEADER = "x-imaged-resume"


@dataclass(frozen=True)
class Topology:
    """Queue and exchange names, all starting with the configured prefix."""

    prefix: str
    delivery_limit: int = 5
    # A lane message comes back whenever a replica stops or dies mid-task (routine during deploys), so lanes
    # tolerate more deliveries than requests, whose processing takes milliseconds.
    lane_delivery_limit: int = 20
    # Webhook backoff tiers (queues ``<prefix>.webhooks.wait.0`` ..): not a field, every replica has the same.
    WEBHOOK_WAIT_TIERS = 7

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(settings.amqp_prefix, settings.delivery_limit, settings.lane_delivery_limit)

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    def work(self, provider: str) -> str:
        return f"{self.prefix}.work.{provider}"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def control(self) -> str:
        """Fanout exchange: cancel requests broadcast to every replica."""
        return f"{self.prefix}.control"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_watch(self) -> str:
        return f"{self.prefix}.dead.watch"

    @property
    def webhooks(self) -> str:
        """Webhook deliveries that are due (``imaged/webhooks``)."""
        return f"{self.prefix}.webhooks"

    def webhook_wait(self, tier: int) -> str:
        """Where a webhook delivery waits before its next attempt: one queue per backoff tier, so that every
        message of a queue waits as long as the others (a queue expires messages only at its head)."""
        return f"{self.prefix}.webhooks.wait.{tier}"

    @property
    def webhook_queues(self) -> list[str]:
        return [self.webhooks, *(self.webhook_wait(tier) for tier in range(self.WEBHOOK_WAIT_TIERS))]

    def queues(self, providers: Iterable[str]) -> list[str]:
        """Every durable queue of this prefix (cleanup and checks derive names from here, not by hand)."""
        return [
            self.requests,
            *(self.work(p) for p in providers),
            self.dead,
            self.dead_watch,
            *self.webhook_queues,
        ]

    @property
    def exchanges(self) -> list[str]:
        """Every exchange of this prefix."""
        return [self.events, self.control, self.dlx]

    def queue_arguments(self, delivery_limit: int) -> dict[str, Any]:
        # RabbitMQ 3.10 quorum queues have no default delivery limit: set one, or a poison message loops forever.
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": self.dlx,
        }


def json_object(body: bytes) -> dict[str, Any] | None:
    """A message body as a JSON object; None when it is not one (not UTF-8, not JSON, nested too deep)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def persistent_message(
    body: bytes, *, content_type: str | None = "application/json", **properties: Any
) -> Message:
    """A message that survives a broker restart: how imaged publishes everything but control broadcasts."""
    return Message(body, content_type=content_type, delivery_mode=DeliveryMode.PERSISTENT, **properties)


async def publish_request(
    channel: AbstractChannel, topology: Topology, body: bytes, *, message_id: str, **properties: Any
) -> None:
    """Publish a request to the requests queue, as any publisher does (``imaged submit``, dead-letter replay)."""
    await channel.default_exchange.publish(
        persistent_message(body, message_id=message_id, **properties), routing_key=topology.requests
    )


class Broker:
    """One robust connection, a confirmed publishing channel, and the declared topology."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.topology = topology
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.events_exchange: AbstractExchange | None = None
        self.dlx_exchange: AbstractExchange | None = None

    async def connect(self, *, connect_timeout_s: float = 10.0) -> None:
        self.connection = await aio_pika.connect_robust(
            self.url, timeout=connect_timeout_s, client_properties={"connection_name": "imaged"}
        )
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.declare(self.channel, [])
        self.events_exchange = await self.channel.get_exchange(self.topology.events)
        self.dlx_exchange = await self.channel.get_exchange(self.topology.dlx)

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def declare(self, channel: AbstractChannel, providers: list[str]) -> dict[str, AbstractQueue]:
        """Declare exchanges and queues (idempotent). Returns the queues by name."""
        t = self.topology
        await channel.declare_exchange(t.events, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(t.control, aio_pika.ExchangeType.FANOUT, durable=True)
        dlx = await channel.declare_exchange(t.dlx, aio_pika.ExchangeType.FANOUT, durable=True)
        queues: dict[str, AbstractQueue] = {}
        for name in (t.dead, t.dead_watch):
            queues[name] = await channel.declare_queue(
                name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queues[name].bind(dlx)
        queues[t.requests] = await channel.declare_queue(
            t.requests, durable=True, arguments=t.queue_arguments(t.delivery_limit)
        )
        for provider in providers:
            queues[t.work(provider)] = await channel.declare_queue(
                t.work(provider), durable=True, arguments=t.queue_arguments(t.lane_delivery_limit)
            )
        return queues

    async def open_consumer_channel(self, prefetch: int) -> AbstractChannel:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    def _require_channel(self) -> AbstractChannel:
        if self.channel is None:
            raise RuntimeError("broker is not connected")
        return self.channel

    async def publish_event(
        self,
        body: bytes,
        routing_key: str,
        headers: dict[str, Any],
        message_id: str,
        correlation_id: str | None,
    ) -> None:
        assert self.events_exchange is not None
        await self.events_exchange.publish(
            persistent_message(body, message_id=message_id, correlation_id=correlation_id, headers=headers),
            routing_key=routing_key,
        )

    async def publish_to_queue(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        expiration: float | None = None,
    ) -> None:
        """Publish through the default exchange (routing key = queue name), as publishers do."""
        channel = self._require_channel()
        await channel.default_exchange.publish(
            persistent_message(
                body,
                message_id=message_id,
                correlation_id=correlation_id,
                headers=headers or {},
                expiration=expiration,
            ),
            routing_key=queue,
        )

    async def publish_control(self, message: dict[str, Any]) -> None:
        """Broadcast a control message (e.g. ``{"cancel": task_id}``) to every replica."""
        channel = self._require_channel()
        exchange = await channel.get_exchange(self.topology.control, ensure=False)
        await exchange.publish(
            aio_pika.Message(json.dumps(message).encode(), content_type="application/json"), routing_key=""
        )

    async def consume_control(
        self, channel: AbstractChannel, callback: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> AbstractQueue:
        """This replica's own queue on the control exchange (server-named, gone when the connection is)."""
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.control)
        await queue.consume(callback, no_ack=True)
        return queue

    async def listen_events(
        self, channel: AbstractChannel, callback: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> AbstractQueue:
        """A queue of this process's own on the events exchange, every task's events (gone with the channel)."""
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.events, routing_key="task.#")
        await queue.consume(callback, no_ack=True)
        return queue

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, error: dict[str, Any]) -> None:
        """Copy a message to the dead-letter exchange with the reason, before the caller acks the original."""
        assert self.dlx_exchange is not None
        headers = dict(message.headers or {})
        headers["x-imaged-reason"] = reason
        headers["x-imaged-error"] = json.dumps(error, ensure_ascii=False)[:4000]
        headers["x-imaged-original-queue"] = message.routing_key or ""
        await self.dlx_exchange.publish(
            persistent_message(
                message.body,
                content_type=message.content_type,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                headers=headers,
            ),
            routing_key=message.routing_key or "",
        )


async def settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack or requeue; if the channel that delivered it is gone, the broker redelivers it anyway."""
    try:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except (ChannelInvalidStateError, AMQPError, RuntimeError) as exc:
        log.warning("could not settle message (channel gone, it will be redelivered): %s", exc)


class Consumer:
    """Consumption of one queue that comes back when the broker cancels it.

    The broker cancels a consumer when its queue is deleted or a quorum queue loses its leader, and aio-pika does
    not always restore it: ``ensure`` (called periodically) declares the topology again and re-consumes.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        queue_name: str,
        callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
        declare: Callable[[AbstractChannel], Awaitable[object]],
    ) -> None:
        """``declare`` declares the queue (and what it depends on) again on a channel, before consuming again."""
        self.channel = channel
        self.queue_name = queue_name
        self.callback = callback
        self.declare = declare
        self.queue: AbstractQueue | None = None
        self.tag: str | None = None
        self._missing = 0

    async def start(self) -> None:
        self.queue = await self.channel.get_queue(self.queue_name)
        self.tag = await self.queue.consume(self.callback)

    @property
    def active(self) -> bool:
        return self.tag is not None

    async def ensure(self) -> None:
        """Consume again if the broker cancelled this consumer.

        Acts only when the consumer is missing on two checks in a row: aio-pika restores consumers itself after
        a reconnect, and a second consumer on the same queue must not be added while it does.
        """
        if self.tag is None or self.channel.is_closed:
            return
        underlay = await asyncio.wait_for(self.channel.get_underlay_channel(), 5)
        if self.tag in getattr(underlay, "consumers", {self.tag: None}):
            self._missing = 0
            return
        self._missing += 1
        if self._missing < 2:
            return
        log.warning("the broker cancelled the consumer of %s; consuming again", self.queue_name)
        await self.declare(self.channel)
        await self.start()
        self._missing = 0

    async def cancel(self) -> None:
        if self.queue is not None and self.tag is not None:
            tag, self.tag = self.tag, None
            try:
                await self.queue.cancel(tag)
            except (AMQPError, ChannelInvalidStateError, RuntimeError) as exc:
                log.warning("could not cancel the consumer of %s: %s", self.queue_name, exc)
