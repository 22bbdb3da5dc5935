"""One task's way through a provider: slot → claim → submit (once) → poll → download → record → terminal event.

A job may start on a fresh task or on one that a crashed replica left behind: it reads the stored state and
resumes (a stored provider task id is polled, never submitted again; a terminal task re-publishes its event).

The database sees a new task three times, however long it runs and however many tasks wait: its claim just
before the submit, the provider's task id, the terminal state (the task itself arrives with its lane message;
inserts are group-committed with other jobs'). Slots and turns are taken in memory (``limits.py``), polls write
nothing, and a cancel is heard as a broadcast (``cancels.py``). A task delivered again is read from the
database and its claim taken over (``claims.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from . import retry
from .cancels import RECHECK_S, CancelBoard
from .catalog import Catalog, ModelSpec
from .claims import Claims, ClaimState
from .contract import ErrorCategory, ErrorInfo, Result, Status, utcnow
from .errors import HandBack, InvalidRequest, TaskError
from .events import EventPublisher
from .images import ImageDownloader
from .limits import ProviderLimits
from .metrics import Metrics
from .outage import is_outage, wait_out
from .provider_output import ProviderOutput
from .providers.base import Credential, PollResult, Provider, ProviderState
from .redact import Redactor
from .results import collect
from .settings import Settings
from .store import TaskStore
from .task import RESUME_SEQ_GAP, Task

log = logging.getLogger(__name__)

T = TypeVar("T")

# Submit failures after which the provider may nevertheless have created the task.
AMBIGUOUS_SUBMIT_CODES = frozenset({"timeout", "connection_error", "malformed_response"})
#: progress is stored (for HTTP readers) at most this often; events carry every step
PROGRESS_STORE_S = 5.0
#: how often a job waiting for another replica's claim looks again
CLAIM_WAIT_S = 1.0


@dataclass
class JobDeps:
    """What every job of a daemon shares."""

    settings: Settings
    catalog: Catalog
    store: TaskStore
    events: EventPublisher
    downloader: ImageDownloader
    metrics: Metrics
    claims: Claims
    cancels: CancelBoard
    #: set when the daemon shuts down: no new submits, waiting jobs hand their task back
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    #: removes secrets from what providers say (they may echo a key)
    redactor: Redactor = field(default_factory=Redactor)


class ClaimHeld(Exception):
    """Another live replica drives this task; wait for it instead of submitting."""


class Job:
    """Drives one task to a terminal status. ``run`` returns when the outcome is stored and its event confirmed."""

    def __init__(
        self,
        deps: JobDeps,
        provider: Provider,
        limits: ProviderLimits,
        task_id: str,
        *,
        resumed: bool,
        snapshot: Task | None = None,
    ) -> None:
        self.deps = deps
        self.provider = provider
        self.limits = limits
        self.output = ProviderOutput(deps.redactor)
        self.task_id = task_id
        self.resumed = resumed
        #: the task as intake stored it, from the lane message of its first delivery
        self.snapshot = snapshot
        #: this job holds the task's claim and has not finished it
        self.claimed = False
        self.claim_state = ClaimState.CLAIMED
        #: an earlier submit may have reached the provider without its task id being recorded
        self.ambiguous = False
        # Cleared from just before a submit until its provider task id is stored: shutdown must not cancel the
        # job inside that window, or the task may be paid for twice.
        self.outside_submit = asyncio.Event()
        self.outside_submit.set()
        self.canceled = deps.cancels.watch(task_id)
        self._progress_events = 0

    async def run(self) -> Status:
        """Take the task from its stored state to a terminal status (waiting while another replica drives it)."""
        try:
            while True:
                if self.snapshot is not None and not self.resumed:
                    task: Task | None = self.snapshot
                else:
                    task = await self.deps.store.get(self.task_id)
                if task is None:
                    raise TaskError(f"task {self.task_id} is not in the store", code="unknown_task")
                if not task.terminal and (self.resumed or task.status is not Status.PENDING):
                    task = await self._resume(task)
                if task.terminal:
                    log.info("re-publishing the terminal event of an already finished task")
                    await self.deps.events.republish(task)
                    self.claimed = False  # the claim stays with the task
                    return task.status
                try:
                    return await self._run_task(task)
                except ClaimHeld:
                    self.resumed = True  # lost a race for the claim: wait for the other replica
        finally:
            self.deps.cancels.unwatch(self.task_id)
            if self.claimed:
                await self._hand_back()

    async def _run_task(self, task: Task) -> Status:
        d = self.deps
        task.attempts += 1
        spec = d.catalog.get(task.model)
        if spec is None:
            error = InvalidRequest(f"model {task.model!r} left the catalog").info()
            return await self.finish(task, Status.FAILED, error=error)
        try:
            return await self._drive(task, spec)
        except TaskError as exc:
            log.warning(
                "task failed: %s", exc.message, extra={"category": exc.category.value, "code": exc.code}
            )
            status = Status.CANCELED if exc.category is ErrorCategory.CANCELED else Status.FAILED
            return await self.finish(task, status, error=exc.info())

    async def _drive(self, task: Task, spec: ModelSpec) -> Status:
        d = self.deps
        if self._cancel_requested(task) and not task.provider_task_id:
            return await self.finish(task, Status.CANCELED, error=_canceled())
        self._check_deadline(task)
        while True:
            pinned = task.credential if task.provider_task_id else None
            waiting = time.monotonic()
            async with self.limits.slot(pinned) as cred:
                d.metrics.stage_duration.labels(self.provider.name, "slot_wait").observe(
                    time.monotonic() - waiting
                )
                if not task.provider_task_id:
                    self._check_deadline(task)  # waiting for the slot may have taken a while
                    try:
                        await self._submit(task, spec, cred)
                    except TaskError as exc:
                        if exc.category not in (ErrorCategory.AUTH, ErrorCategory.QUOTA):
                            raise
                        # The key is at fault, not the task: rotate it out and try the next one.
                        self.limits.take_out(cred, exc)
                        if not self.limits.active():
                            raise
                        continue
                poll = await self._poll_until_done(task, spec, cred)
            break
        if poll.state is ProviderState.CANCELED:
            return await self.finish(task, Status.CANCELED, error=_canceled())
        if poll.state is ProviderState.FAILED:
            error = poll.error or ErrorInfo(
                category=ErrorCategory.PROVIDER_ERROR, code="failed", message="the provider reported failure"
            )
            return await self.finish(task, Status.FAILED, error=error)
        started = time.monotonic()
        result = await collect(self.provider, spec, task, poll, d.downloader, d.metrics, self.output)
        d.metrics.stage_duration.labels(self.provider.name, "download").observe(time.monotonic() - started)
        return await self.finish(task, Status.COMPLETED, result=result)

    # -- claims -------------------------------------------------------------------------------------------------

    async def _resume(self, task: Task) -> Task:
        """A task delivered again: claim it before anything else, waiting while a live replica drives it."""
        d = self.deps
        while True:
            claim = await d.claims.take(task.id, ClaimState.CLAIMED)
            if claim.taken:
                break
            if d.draining.is_set():
                raise HandBack("shutting down while another replica drives the task")
            log.info("another replica drives this task; waiting", extra={"holder": claim.holder})
            await asyncio.sleep(CLAIM_WAIT_S * random.uniform(0.5, 1.5))
            fresh = await d.store.get(task.id)
            if fresh is None or fresh.terminal:
                return fresh or task
        self.claimed = True
        self.claim_state = claim.previous or ClaimState.CLAIMED
        fresh = await d.store.get(task.id) or task
        if fresh.terminal:
            return fresh
        # Progress events of an interrupted run were numbered in memory only: skip past any it may have sent.
        fresh.seq += RESUME_SEQ_GAP
        await d.store.save(task.id, {"seq": fresh.seq})
        self.ambiguous = not fresh.provider_task_id and (
            self.claim_state is ClaimState.SUBMITTING or bool(fresh.extra.get("submit_started_at"))
        )
        return fresh

    async def _claim_new(self, task: Task, state: ClaimState) -> None:
        """First delivery: claim a task nobody claimed before, or learn that somebody did (then the task is
        read from the database and resumed, whatever this copy of it says)."""
        if not await self.deps.claims.insert(task.id, state):
            raise ClaimHeld("the task was claimed before")
        self.claimed = True
        self.claim_state = state

    async def _ensure_claim(self, task: Task) -> None:
        """Nothing terminal is written for a task without holding its claim."""
        if self.claimed:
            return
        if not self.resumed:
            await self._claim_new(task, ClaimState.CLAIMED)
            return
        claim = await self.deps.claims.take(task.id, ClaimState.CLAIMED)
        if not claim.taken:
            raise ClaimHeld(claim.holder)
        self.claimed = True
        self.claim_state = claim.previous or ClaimState.CLAIMED

    async def _claim_for_submit(self, task: Task) -> None:
        """Mark that a submit may now reach the provider; on a first delivery this is also the claim."""
        d = self.deps
        if not self.claimed:
            await self._claim_new(task, ClaimState.SUBMITTING)
        else:
            if not await d.claims.still_held(task.id):
                self.claimed = False
                raise HandBack("lost the claim on this task (this replica's registration lapsed)")
            if self.claim_state is not ClaimState.SUBMITTING:
                await d.claims.mark(task.id, ClaimState.SUBMITTING)
        self.claim_state = ClaimState.SUBMITTING

    async def _hand_back(self) -> None:
        """The job stops without an outcome: keep what the claim knows, but let anyone take it over."""
        self.claimed = False
        try:
            await self.deps.claims.hand_back(self.task_id)
        except Exception as exc:  # noqa: BLE001 - then the claim frees when this replica's registration does
            log.warning("could not hand back the claim: %s", type(exc).__name__)

    # -- submit -------------------------------------------------------------------------------------------------

    def _submit_unknown(self) -> None:
        """A submit may have reached the provider without its task id being recorded: the one window where a
        task can be paid twice. The policy decides what happens; the counter shows how often it does."""
        policy = self.deps.settings.submit_unknown_policy
        self.deps.metrics.submit_unknown.labels(self.provider.name, policy).inc()
        if policy == "fail":
            raise TaskError(
                "an earlier submit may have reached the provider without its task id being recorded",
                category=ErrorCategory.SUBMIT_UNKNOWN,
            )
        log.warning("submitting again: an earlier submit ended without a provider task id")

    async def _submit(self, task: Task, spec: ModelSpec, cred: Credential) -> None:
        d = self.deps

        async def submit_once() -> str:
            self._may_submit(task)
            await self.limits.before_submit(cred)
            self._may_submit(task)  # the turn may have taken a while
            await self._claim_for_submit(task)
            if self.ambiguous:
                self._submit_unknown()
            self.outside_submit.clear()
            try:
                return await self._counted("submit", self.provider.submit(cred, spec, task.parameters))
            except TaskError as exc:
                self.outside_submit.set()
                self.ambiguous = exc.code in AMBIGUOUS_SUBMIT_CODES
                if not self.ambiguous:
                    self.claim_state = ClaimState.REFUSED
                    await d.claims.mark(task.id, ClaimState.REFUSED)
                raise

        try:
            provider_task_id = await self._with_retries(task, "submit", submit_once)
        except BaseException:
            self.outside_submit.set()
            raise
        try:
            await self._record_submission(task, provider_task_id, cred)
        finally:
            self.outside_submit.set()
        d.metrics.stage_duration.labels(self.provider.name, "queue_wait").observe(
            (task.submitted_at - task.created_at).total_seconds() if task.submitted_at else 0.0
        )
        log.info("submitted", extra={"provider_task_id": provider_task_id, "credential": cred.name})

    def _may_submit(self, task: Task) -> None:
        """Last checks before money is spent: not shutting down, not canceled."""
        if self.deps.draining.is_set():
            raise HandBack("shutting down: the task goes back to the queue unsubmitted")
        if self._cancel_requested(task):
            raise TaskError("the task was canceled before it was submitted", category=ErrorCategory.CANCELED)

    async def _record_submission(self, task: Task, provider_task_id: str, cred: Credential) -> None:
        """Store the provider's task id, waiting out a database outage: losing it would mean paying twice."""
        task.provider_task_id, task.credential, task.submitted_at = provider_task_id, cred.name, utcnow()
        task.status = Status.PROCESSING
        event = self.deps.events.next_event(task, Status.PROCESSING, progress=0.0)
        fields = {
            "provider_task_id": provider_task_id,
            "credential": cred.name,
            "submitted_at": task.submitted_at,
            "attempts": task.attempts,
            "seq": task.seq,
        }
        attempt = 0
        while True:
            try:
                await self.deps.store.save(task.id, fields, status=Status.PROCESSING)
                break
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable while recording a submission (%s); retrying", exc)
                await wait_out(attempt, exc)
                attempt += 1
        self.ambiguous = False
        await self.deps.events.publish(task, event)

    # -- poll ---------------------------------------------------------------------------------------------------

    async def _poll_until_done(self, task: Task, spec: ModelSpec, cred: Credential) -> PollResult:
        d = self.deps
        s = d.settings
        delay = s.poll_first_delay_s if s.poll_first_delay_s is not None else self.provider.first_poll_delay_s
        cap = min(s.poll_max_interval_s, self.provider.max_poll_interval_s)
        provider_task_id = task.provider_task_id
        assert provider_task_id is not None
        started = rechecked = time.monotonic()
        stored_progress = time.monotonic()
        while True:
            # Jitter spreads polls out, but never past the cap: completion is seen within it.
            await self._sleep_unless_canceled(min(cap, delay * random.uniform(0.9, 1.1)))
            delay = min(cap, max(delay, 0.5) * 1.5)
            if time.monotonic() - rechecked >= RECHECK_S:
                rechecked = time.monotonic()
                latest = await d.store.get(task.id)
                task.cancel_requested = bool(latest and latest.cancel_requested)
            if self._cancel_requested(task):
                await self._cancel_at_provider(spec, cred, provider_task_id)
                return PollResult(ProviderState.CANCELED)
            try:
                self._check_deadline(task)
            except TaskError:
                # Nobody waits for the images any more: stop the provider's work where it can be stopped.
                await self._cancel_at_provider(spec, cred, provider_task_id)
                raise

            async def poll_once() -> PollResult:
                await self.limits.before_poll(cred)
                return await self._counted(
                    "poll", self.provider.poll(cred, spec, provider_task_id, task.parameters)
                )

            poll = await self._with_retries(task, "poll", poll_once)
            if poll.state.terminal:
                d.metrics.stage_duration.labels(self.provider.name, "provider").observe(
                    time.monotonic() - started
                )
                return poll
            progress = poll.progress
            if progress is not None and task.progress + 1e-6 < progress < 1.0:
                if self._progress_events >= RESUME_SEQ_GAP - 2:
                    continue  # a run numbers at most that many events in memory
                self._progress_events += 1
                task.progress = progress
                await d.events.emit(task, Status.PROCESSING, event_type="task.progress", progress=progress)
                if time.monotonic() - stored_progress >= PROGRESS_STORE_S:
                    stored_progress = time.monotonic()
                    await d.store.save(task.id, {"progress": progress, "seq": task.seq})

    async def _sleep_unless_canceled(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.canceled.wait(), seconds)

    def _cancel_requested(self, task: Task) -> bool:
        return task.cancel_requested or self.canceled.is_set()

    async def _cancel_at_provider(self, spec: ModelSpec, cred: Credential, provider_task_id: str) -> bool:
        try:
            return await self._counted("cancel", self.provider.cancel(cred, spec, provider_task_id))
        except TaskError as exc:
            log.warning("provider cancel failed: %s", exc.message)
            return False

    def _check_deadline(self, task: Task) -> None:
        if task.deadline is not None and utcnow() > task.deadline:
            raise TaskError(
                "the task passed its deadline (timeout_s)", category=ErrorCategory.TIMEOUT, code="deadline"
            )

    # -- retries ------------------------------------------------------------------------------------------------

    async def _with_retries(self, task: Task, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient provider faults until they stop or the task's deadline passes."""
        policy = retry.PROVIDER_CALL
        attempt = 0
        while True:
            try:
                return await call()
            except TaskError as exc:
                if not exc.retryable:
                    raise
                wait = policy.delay(attempt, exc.retry_after)
                if task.deadline is not None and (task.deadline - utcnow()).total_seconds() < wait:
                    raise TaskError(
                        f"gave up retrying {operation} before the deadline: {exc.message}",
                        category=ErrorCategory.TIMEOUT
                        if exc.category is not ErrorCategory.RATE_LIMITED
                        else exc.category,
                        code=exc.code,
                        provider_status=exc.provider_status,
                    ) from exc
                log.info("retrying %s in %.1fs: %s", operation, wait, exc.message, extra={"code": exc.code})
                attempt += 1
                await asyncio.sleep(0 if retry.testing() else wait)

    async def _counted(self, operation: str, request: Awaitable[T]) -> T:
        """One request to the provider, counted by outcome in ``imaged_provider_requests_total``. What the
        provider said is made safe here (``provider_output``), before anything stores, sends or logs it."""
        requests = self.deps.metrics.provider_requests
        try:
            result = await request
        except TaskError as exc:
            requests.labels(self.provider.name, operation, exc.category.value).inc()
            self.output.error(exc)
            raise
        requests.labels(self.provider.name, operation, "ok").inc()
        if isinstance(result, PollResult):
            self.output.poll(result)
        elif isinstance(result, str):
            self.output.task_id(result)
        return result

    # -- finish -------------------------------------------------------------------------------------------------

    async def finish(
        self, task: Task, status: Status, *, result: Result | None = None, error: ErrorInfo | None = None
    ) -> Status:
        """Store the terminal state with its event and publish the event (confirmed by the broker). The claim
        stays with the task, so that a stale copy of its lane message cannot start it again."""
        d = self.deps
        await self._ensure_claim(task)
        started = time.monotonic()
        await d.events.finish(task, status, result=result, error=error)
        self.claimed = False
        d.metrics.stage_duration.labels(task.provider, "publish").observe(time.monotonic() - started)
        d.metrics.tasks.labels(task.provider, task.model, status.value).inc()
        if error is not None:
            d.metrics.task_errors.labels(task.provider, error.category.value).inc()
        d.metrics.task_duration.labels(task.provider, status.value).observe(
            (utcnow() - task.created_at).total_seconds()
        )
        log.info("task %s", status.value, extra={"category": error.category.value if error else None})
        return status


def _canceled() -> ErrorInfo:
    return ErrorInfo(category=ErrorCategory.CANCELED, code="canceled", message="the task was canceled")
