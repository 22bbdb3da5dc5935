"""A provider lane: the consumer of ``<prefix>.work.<provider>`` and the supervisor of its jobs.

Jobs never run inside the aio-pika callback (it is cancelled when its channel closes): the callback hands the
message to the supervisor, which owns the job as a task, acks when the job is done, and drains on shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from .broker import Broker
from .errors import TaskError
from .job import Job, JobDeps
from .limits import SlotPool
from .logs import job_context
from .providers.base import Provider

log = logging.getLogger(__name__)


class Lane:
    """Runs the tasks of one provider, at most as many at once as its credentials have slots."""

    def __init__(self, provider: Provider, broker: Broker, deps: JobDeps, slots: SlotPool) -> None:
        self.provider = provider
        self.broker = broker
        self.deps = deps
        self.slots = slots
        self.queue_name = broker.topology.work(provider.name)
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.consumer_tag: str | None = None

    async def start(self) -> None:
        self.channel = await self.broker.open_consumer_channel(prefetch=self.slots.capacity)
        self.queue = await self.channel.get_queue(self.queue_name)
        self.consumer_tag = await self.queue.consume(self.on_message)
        log.info("lane %s consuming (%d slots)", self.provider.name, self.slots.capacity)

    async def stop_consuming(self) -> None:
        if self.queue is not None and self.consumer_tag is not None:
            try:
                await self.queue.cancel(self.consumer_tag)
            except (AMQPError, ChannelInvalidStateError, RuntimeError) as exc:
                log.warning("could not cancel lane consumer: %s", exc)
            self.consumer_tag = None

    async def drain(self, grace_s: float) -> None:
        """Let running jobs finish within the grace period; cancel the rest (their messages stay unacked)."""
        if self.jobs:
            log.info(
                "lane %s: waiting up to %.0fs for %d job(s)", self.provider.name, grace_s, len(self.jobs)
            )
            _, pending = await asyncio.wait(list(self.jobs.values()), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.channel is not None and not self.channel.is_closed:
            await self.channel.close()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            task_id = str(json.loads(message.body)["task_id"])
        except (ValueError, KeyError, TypeError):
            await self.broker.dead_letter(
                message, "bad_work_message", {"message": "lane message without task_id"}
            )
            await message.ack()
            return
        if message.redelivered:
            self.deps.metrics.redeliveries.labels(self.provider.name).inc()
        if task_id in self.jobs:
            log.info("duplicate delivery of a running task", extra={"task_id": task_id})
            await _settle(message, ack=True)
            return
        job = asyncio.create_task(self._run(task_id, message), name=f"job:{task_id}")
        self.jobs[task_id] = job
        job.add_done_callback(lambda _: self.jobs.pop(task_id, None))

    async def _run(self, task_id: str, message: AbstractIncomingMessage) -> None:
        gauge = self.deps.metrics.in_flight.labels(self.provider.name)
        gauge.inc()
        try:
            doc_fields = {"task_id": task_id, "provider": self.provider.name}
            with job_context(**doc_fields):
                await self._run_job(task_id, message)
        finally:
            gauge.dec()

    async def _run_job(self, task_id: str, message: AbstractIncomingMessage) -> None:
        job = Job(self.deps, self.provider, self.slots, task_id)
        try:
            await job.run()
        except asyncio.CancelledError:
            log.info("job interrupted by shutdown; its message goes back to the queue")
            raise
        except TaskError as exc:
            # Raised before the task could be stored as failed (e.g. unknown task): nothing to retry.
            log.error("dropping lane message: %s", exc.message)
            await self.broker.dead_letter(message, exc.code, exc.info().model_dump(mode="json"))
            await _settle(message, ack=True)
            return
        except Exception:
            log.exception("job crashed; the message will be redelivered")
            await _settle(message, ack=False)
            return
        await _settle(message, ack=True)


async def _settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack or requeue; if the channel that delivered it is gone, the broker redelivers it anyway."""
    try:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except (ChannelInvalidStateError, AMQPError, RuntimeError) as exc:
        log.warning("could not settle message (channel gone, it will be redelivered): %s", exc)


def lane_summary(lanes: list[Lane]) -> dict[str, Any]:
    return {
        lane.provider.name: {"running": len(lane.jobs), "consuming": lane.consumer_tag is not None}
        for lane in lanes
    }
