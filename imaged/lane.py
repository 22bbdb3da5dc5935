"""A provider lane: the consumer of ``<prefix>.work.<provider>`` and the supervisor of its jobs.

Jobs never run inside the aio-pika callback (it is cancelled when its channel closes): the callback hands the
message to the supervisor, which owns the job as a task, acks when the job is done, and drains on shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from .broker import RESUME_HEADER, Broker, Consumer, json_object, settle
from .contract import ErrorCategory, ErrorInfo, Status
from .delivery import DeadLetter, DeliveryPolicy, process
from .errors import TaskError
from .job import Job, JobDeps
from .limits import ProviderLimits
from .logs import job_context
from .providers.base import Provider
from .task import Task

log = logging.getLogger(__name__)

# How long shutdown waits, past its grace period, for a job to leave a submit (the provider's request timeout).
SUBMIT_WINDOW_S = 40.0


class Lane:
    """Runs the tasks of one provider, at most as many at once as its credentials have slots."""

    def __init__(self, provider: Provider, broker: Broker, deps: JobDeps, limits: ProviderLimits) -> None:
        self.provider = provider
        self.broker = broker
        self.deps = deps
        self.limits = limits
        self.queue_name = broker.topology.work(provider.name)
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.deliveries: dict[str, list[AbstractIncomingMessage]] = {}
        self.running: dict[str, Job] = {}
        self.channel: AbstractChannel | None = None
        self.consumer: Consumer | None = None
        self.policy = DeliveryPolicy(
            self.queue_name, delivery_limit=broker.topology.lane_delivery_limit, give_up=self._give_up
        )

    async def start(self, providers: list[str]) -> None:
        self.channel = await self.broker.open_consumer_channel(prefetch=self.limits.capacity)
        self.consumer = Consumer(
            self.channel,
            self.queue_name,
            self.on_message,
            functools.partial(self.broker.declare, providers=providers),
        )
        await self.consumer.start()
        log.info("lane %s consuming (%d slots)", self.provider.name, self.limits.capacity)

    @property
    def consuming(self) -> bool:
        return self.consumer is not None and self.consumer.active

    async def stop_consuming(self) -> None:
        if self.consumer is not None:
            await self.consumer.cancel()

    async def drain(self, grace_s: float) -> None:
        """Let running jobs finish within the grace period, then hand the rest back (their messages stay unacked).

        A job between a provider's reply and the write of its task id is never interrupted: that would mean
        paying twice. It gets up to ``SUBMIT_WINDOW_S`` more to leave that window.
        """
        if self.jobs:
            log.info(
                "lane %s: waiting up to %.0fs for %d job(s)", self.provider.name, grace_s, len(self.jobs)
            )
            _, pending = await asyncio.wait(list(self.jobs.values()), timeout=grace_s)
            submitting = [
                job.outside_submit.wait() for job in self.running.values() if not job.outside_submit.is_set()
            ]
            if submitting:
                await asyncio.wait([asyncio.ensure_future(w) for w in submitting], timeout=SUBMIT_WINDOW_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.channel is not None and not self.channel.is_closed:
            await self.channel.close()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        body = json_object(message.body)
        if body is None or not isinstance(body.get("task_id"), str):
            await self.broker.dead_letter(
                message, "bad_work_message", {"message": "lane message without task_id"}
            )
            await settle(message, ack=True)
            return
        task_id: str = body["task_id"]
        if message.redelivered:
            self.deps.metrics.redeliveries.labels(self.provider.name).inc()
        if task_id in self.jobs:
            # Another delivery of a task this process runs (e.g. after a reconnect, the old channel's copy cannot
            # be acked any more). Keep it with the job and settle it with the job's outcome.
            log.info("duplicate delivery of a running task", extra={"task_id": task_id})
            self.deliveries[task_id].append(message)
            return
        self.deliveries[task_id] = [message]
        # A first delivery starts from the task it carries; anything else may meet a task another run left
        # behind, and reads it from the database.
        resumed = bool(message.redelivered or (message.headers or {}).get(RESUME_HEADER))
        snapshot = None if resumed else _snapshot(body, task_id)
        self.jobs[task_id] = asyncio.create_task(self._run(task_id, resumed, snapshot), name=f"job:{task_id}")

    async def _run(self, task_id: str, resumed: bool, snapshot: Task | None) -> None:
        gauge = self.deps.metrics.in_flight.labels(self.provider.name)
        gauge.inc()

        async def run_job(after_outage: bool) -> None:
            # After an outage the job starts again from whatever was stored.
            job = Job(
                self.deps,
                self.provider,
                self.limits,
                task_id,
                resumed=resumed or after_outage,
                snapshot=None if after_outage else snapshot,
            )
            self.running[task_id] = job
            try:
                await job.run()
            except TaskError as exc:
                # Raised before the task could be stored as failed (e.g. an unknown task): nothing to retry.
                log.error("dropping lane message: %s", exc.message)
                raise DeadLetter(exc.code, exc.info().model_dump(mode="json")) from exc

        try:
            with job_context(task_id=task_id, provider=self.provider.name):
                await process(self.deliveries[task_id], run_job, self.policy, self.broker, self.deps.metrics)
        finally:
            self.deliveries.pop(task_id, None)
            self.jobs.pop(task_id, None)
            self.running.pop(task_id, None)
            gauge.dec()

    async def _give_up(self, messages: Sequence[AbstractIncomingMessage], exc: BaseException) -> None:
        """A job that crashed on its last allowed delivery: fail its task instead of looping, dead-letter it."""
        task_id = str((json_object(messages[-1].body) or {}).get("task_id"))
        error = ErrorInfo(
            category=ErrorCategory.INTERNAL,
            code="crashed",
            message=f"imaged failed on this task: {type(exc).__name__}",
        )
        task = await self.deps.store.get(task_id)
        if task is not None and not task.terminal:
            job = Job(
                self.deps, self.provider, self.limits, task_id, resumed=True
            )  # its claim was handed back
            await job.finish(task, Status.FAILED, error=error)
        await self.broker.dead_letter(messages[-1], "crashed", error.model_dump(mode="json"))


def _snapshot(body: object, task_id: str) -> Task | None:
    """The task a lane message carries (from intake, for a task it just created), if it is usable."""
    data = body.get("task") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return None
    try:
        task = Task.from_message(data)
    except (ValueError, KeyError, TypeError):
        log.warning("lane message with an unreadable task; reading the task from the database instead")
        return None
    return task if task.id == task_id else None
