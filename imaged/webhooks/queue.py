"""The durable queue of webhook deliveries on RabbitMQ.

``<prefix>.webhooks`` (quorum) holds deliveries that are due; ``<prefix>.webhooks.wait.<tier>`` (quorum, one per
backoff tier of ``schedule.py``) hold deliveries waiting for their next attempt: each message expires after its
tier's delay and the broker dead-letters it back to ``<prefix>.webhooks`` (at-least-once dead-lettering, so a
broker failure cannot drop it). Every message is persistent and published with confirms: a delivery survives
restarts of imaged and of the broker.

Anyone allowed to publish on the vhost can reach these queues through the default exchange, and a message here
makes imaged sign a body and POST it to a URL. So every message carries an HMAC of its body
(``x-imaged-signature``) with a key the replicas share through the database, as lane messages do
(``provenance.py``); an unsigned message is dropped.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from ..broker import Consumer, Topology, json_object, persistent_message
from ..provenance import SIGNATURE_HEADER, LaneSigner

_KEY_ID = "webhook-queue-key"


@dataclass
class Delivery:
    """One event on its way to one URL: the message that travels between the queues.

    ``delivery_id`` names one enqueue (a replay is a new delivery of the same event); ``attempt`` is the number
    of the attempt this message is for; ``first_attempt_at`` (Unix seconds) is set by the first attempt and
    starts the retry window; ``body`` is the event's JSON text, signed and sent byte for byte on every attempt.
    """

    delivery_id: str
    task_id: str
    event_id: str
    event: str
    url: str
    body: str
    attempt: int = 1
    first_attempt_at: float | None = None
    final: bool = False

    @classmethod
    def new(cls, task_id: str, event_id: str, event: str, url: str, body: str) -> Delivery:
        return cls(secrets.token_hex(8), task_id, event_id, event, url, body)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Delivery | None:
        fields = json_object(data)
        if fields is None:
            return None
        try:
            delivery = cls(**fields)
        except TypeError:
            return None
        texts = (delivery.delivery_id, delivery.task_id, delivery.event_id, delivery.event, delivery.url)
        if not all(isinstance(t, str) for t in (*texts, delivery.body)) or not isinstance(
            delivery.attempt, int
        ):
            return None
        return delivery


class WebhookQueue:
    """A connection of its own, a confirmed publishing channel, the declared queues, and their consumer."""

    def __init__(self, url: str, topology: Topology, signer: LaneSigner) -> None:
        """``signer`` signs and checks the messages (a key derived from the replicas' shared one)."""
        self.url = url
        self.topology = topology
        self.signer = signer
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.consumer_channel: AbstractChannel | None = None
        #: consumption of the due queue, restored when the broker cancels it (``Consumer.ensure``)
        self.consumer: Consumer | None = None

    async def connect(self, *, timeout_s: float = 10.0) -> None:
        self.connection = await aio_pika.connect_robust(
            self.url, timeout=timeout_s, client_properties={"connection_name": "imaged-webhooks"}
        )
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.declare(self.channel)

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        """Declare the queues (idempotent); returns the queue of due deliveries."""
        t = self.topology
        # No broker delivery limit: the consumer ends a delivery that keeps coming back, and records why.
        due = await channel.declare_queue(t.webhooks, durable=True, arguments={"x-queue-type": "quorum"})
        for tier in range(t.WEBHOOK_WAIT_TIERS):
            await channel.declare_queue(
                t.webhook_wait(tier),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": t.webhooks,
                    "x-dead-letter-strategy": "at-least-once",  # requires reject-publish overflow
                    "x-overflow": "reject-publish",
                },
            )
        return due

    async def publish(self, delivery: Delivery, *, wait_tier: int | None = None, wait_s: float = 0.0) -> None:
        """Publish (confirmed) to the due queue, or to a wait queue for ``wait_s``; raises if the broker fails."""
        if self.channel is None:
            raise RuntimeError("the webhook queue is not connected")
        body = delivery.to_bytes()
        routing_key = self.topology.webhooks if wait_tier is None else self.topology.webhook_wait(wait_tier)
        await self.channel.default_exchange.publish(
            persistent_message(
                body,
                message_id=f"{delivery.delivery_id}:{delivery.attempt}",
                headers={SIGNATURE_HEADER: self.signer.sign(body)},
                expiration=wait_s if wait_tier is not None else None,
            ),
            routing_key=routing_key,
        )

    def read(self, message: AbstractIncomingMessage) -> Delivery | None:
        """The delivery a message carries, if imaged signed it; None otherwise."""
        if not self.signer.verify(message.body, (message.headers or {}).get(SIGNATURE_HEADER)):
            return None
        return Delivery.from_bytes(message.body)

    async def consume(
        self, callback: Callable[[AbstractIncomingMessage], Awaitable[None]], prefetch: int
    ) -> None:
        assert self.connection is not None
        self.consumer_channel = await self.connection.channel(publisher_confirms=True)
        await self.consumer_channel.set_qos(prefetch_count=prefetch)
        await self.declare(self.consumer_channel)
        self.consumer = Consumer(self.consumer_channel, self.topology.webhooks, callback, self.declare)
        await self.consumer.start()

    async def stop_consuming(self) -> None:
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.cancel()

    async def close(self) -> None:
        """Close the connection: deliveries taken but not acknowledged go back to the queue."""
        if self.connection is not None:
            connection, self.connection = self.connection, None
            self.channel = self.consumer_channel = None
            await connection.close()
