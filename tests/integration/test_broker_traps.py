"""aio-pika traps on a real broker: a consumer the broker cancels comes back (acks on a dead channel: R2)."""

from __future__ import annotations

import asyncio
import secrets

import aio_pika
import pytest

from imaged.daemon import Daemon

from ..support import AMQP_URL, Bus, seed_body

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("queue_name", ["work.liblibai", "webhooks"])
async def test_consumer_cancelled_by_the_broker_is_restored(
    daemon: Daemon, bus: Bus, queue_name: str
) -> None:
    # Deleting a queue makes the broker cancel its consumers (basic.cancel): the daemon must notice and
    # consume again once the queue is back, or the lane (or the webhook deliveries) would sit idle.
    lane_queue = f"{daemon.settings.amqp_prefix}.{queue_name}"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(lane_queue)
    finally:
        await connection.close()
    async with asyncio.timeout(30):
        while True:
            connection = await aio_pika.connect(AMQP_URL)
            try:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(lane_queue, passive=True)
                    if (queue.declaration_result.consumer_count or 0) > 0:
                        break
                except aio_pika.exceptions.ChannelClosed:
                    pass
            finally:
                await connection.close()
            await asyncio.sleep(0.5)
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
    event = (await bus.wait_terminal([task_id], within=40))[task_id]
    assert event["status"] == "completed"
