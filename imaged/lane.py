"""A provider lane: the consumer of ``<prefix>.work.<provider>`` and the supervisor of its jobs.

Jobs never run inside the aio-pika callback (it is cancelled when its channel closes): the callback hands the
message to the supervisor, which owns the job as a task, acks when the job is done, and drains on shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from . import retry
from .broker import RESUME_HEADER, Broker, Consumer, settle
from .contract import ErrorCategory, ErrorInfo, Status
from .errors import HandBack, TaskError
from .job import Job, JobDeps
from .limits import ProviderLimits
from .logs import job_context
from .outage import is_outage, wait_out
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

    async def start(self, providers: list[str]) -> None:
        self.channel = await self.broker.open_consumer_channel(prefetch=self.limits.capacity)
        self.consumer = Consumer(self.broker, self.channel, self.queue_name, self.on_message, providers)
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
        try:
            body = json.loads(message.body)
            task_id = str(body["task_id"])
        except (ValueError, KeyError, TypeError):
            await self.broker.dead_letter(
                message, "bad_work_message", {"message": "lane message without task_id"}
            )
            await settle(message, ack=True)
            return
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
        try:
            with job_context(task_id=task_id, provider=self.provider.name):
                ack = await self._run_job(task_id, resumed, snapshot)
            await self._settle_all(task_id, ack=ack)
        finally:
            self.deliveries.pop(task_id, None)
            self.jobs.pop(task_id, None)
            self.running.pop(task_id, None)
            gauge.dec()

    async def _settle_all(self, task_id: str, *, ack: bool) -> None:
        """Settle every delivery of the task, including duplicates that arrive while settling."""
        messages = self.deliveries.get(task_id, [])
        done = 0
        while done < len(messages):
            await settle(messages[done], ack=ack)
            done += 1

    async def _run_job(self, task_id: str, resumed: bool, snapshot: Task | None) -> bool:
        """Run the job; returns whether its messages are to be acked (False: back to the queue).

        An outage of the broker or database pauses the job and runs it again from the stored state.
        """
        outage = 0
        while True:
            job = Job(self.deps, self.provider, self.limits, task_id, resumed=resumed, snapshot=snapshot)
            self.running[task_id] = job
            try:
                await job.run()
                return True
            except asyncio.CancelledError:
                log.info("job interrupted by shutdown; its message goes back to the queue")
                raise
            except HandBack as exc:
                log.info("handing the task back: %s", exc)
                return False
            except TaskError as exc:
                # Raised before the task could be stored as failed (e.g. unknown task): nothing to retry.
                log.error("dropping lane message: %s", exc.message)
                try:
                    await self.broker.dead_letter(
                        self.deliveries[task_id][-1], exc.code, exc.info().model_dump(mode="json")
                    )
                except Exception as publish_error:
                    if not is_outage(publish_error):
                        raise
                    return False  # the broker redelivers it, and we decide again
                return True
            except Exception as exc:  # noqa: BLE001 - sorted below: an outage, or a bug / poison task
                if not is_outage(exc):
                    return await self._crashed(job, exc)
                log.warning("backing service unavailable (%s: %s); resuming", type(exc).__name__, exc)
                await wait_out(outage, exc)
                outage += 1
                resumed, snapshot = True, None  # the next run starts from whatever was stored

    async def _crashed(self, job: Job, exc: Exception) -> bool:
        """A bug or a poison task: requeue, and on the last allowed delivery fail the task instead of looping."""
        message = self.deliveries[job.task_id][-1]
        count = (message.headers or {}).get("x-delivery-count", 0)
        deliveries = (count if isinstance(count, int) else 0) + 1
        if deliveries < self.broker.topology.lane_delivery_limit:
            log.exception(
                "job crashed (delivery %d); the message will be redelivered", deliveries, exc_info=exc
            )
            await retry.CRASHED.wait(deliveries)  # no hot loop through the delivery limit
            return False
        log.exception("job crashed on its last allowed delivery; failing the task", exc_info=exc)
        error = ErrorInfo(
            category=ErrorCategory.INTERNAL,
            code="crashed",
            message=f"imaged failed on this task: {type(exc).__name__}",
        )
        try:
            task = await self.deps.store.get(job.task_id)
            if task is not None and not task.terminal:
                job.resumed = True  # its claim was handed back: take it over to write the outcome
                await job.finish(task, Status.FAILED, error=error)
            await self.broker.dead_letter(message, "crashed", error.model_dump(mode="json"))
        except Exception:
            log.exception("could not record the crash; requeueing")
            return False
        self.deps.metrics.dead_letters.labels("crashed").inc()
        return True


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
