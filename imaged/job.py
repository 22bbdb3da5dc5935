"""One task's way through a provider: slot → submit (once) → poll → download → record → terminal event.

A job may start on a fresh task or on one that a crashed replica left behind: it reads the stored state and
resumes (a stored provider task id is polled, never submitted again; a terminal task re-publishes its event).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from .catalog import Catalog, ModelSpec
from .contract import ErrorCategory, ErrorInfo, ImageInfo, Result, Status, utcnow
from .errors import DownloadError, HandBack, InvalidRequest, TaskError
from .events import EventPublisher
from .images import ImageDownloader
from .leases import Leases
from .limits import ProviderSlots
from .metrics import Metrics
from .outage import is_outage, outage_delay
from .providers.base import Credential, PollResult, Provider, ProviderState
from .settings import Settings
from .store import TaskDoc, TaskStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# Submit failures after which the provider may nevertheless have created the task.
AMBIGUOUS_SUBMIT_CODES = frozenset({"timeout", "connection_error", "malformed_response"})


@dataclass
class RetryPolicy:
    """Capped exponential backoff with full jitter; ``Retry-After`` wins when the provider sends one."""

    base_s: float = 0.5
    cap_s: float = 30.0
    download_attempts: int = 6

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s * 4)
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


@dataclass
class JobDeps:
    """What every job of a daemon shares."""

    settings: Settings
    catalog: Catalog
    store: TaskStore
    events: EventPublisher
    downloader: ImageDownloader
    metrics: Metrics
    retry: RetryPolicy
    leases: Leases
    #: set when the daemon shuts down: no new submits, waiting jobs hand their task back
    draining: asyncio.Event = field(default_factory=asyncio.Event)


class Job:
    """Drives one task to a terminal status. ``run`` returns when the outcome is stored and its event confirmed."""

    def __init__(self, deps: JobDeps, provider: Provider, slots: ProviderSlots, task_id: str) -> None:
        self.deps = deps
        self.provider = provider
        self.slots = slots
        self.task_id = task_id
        # Cleared from just before a submit until its provider task id is stored: shutdown must not cancel the
        # job inside that window, or the task may be paid for twice.
        self.outside_submit = asyncio.Event()
        self.outside_submit.set()

    @property
    def claim(self) -> str:
        return f"task:{self.task_id}"

    async def run(self) -> Status:
        """Claim the task (waiting while another replica drives it), then take it from its stored state."""
        leases = self.deps.leases
        async with leases.hold(self.claim, leases.holder_prefix):
            return await self._run_claimed()

    async def _run_claimed(self) -> Status:
        d = self.deps
        doc = await d.store.get(self.task_id)
        if doc is None:
            raise TaskError(f"task {self.task_id} is not in the store", code="unknown_task")
        if Status(doc["status"]).terminal:
            log.info("re-publishing the terminal event of an already finished task")
            await d.events.republish(doc)
            return Status(doc["status"])
        await d.store.update(self.task_id, {}, inc={"attempts": 1})
        spec = d.catalog.get(doc["model"])
        if spec is None:
            return await self.finish(
                doc, Status.FAILED, error=InvalidRequest(f"model {doc['model']!r} left the catalog").info()
            )
        try:
            return await self._drive(doc, spec)
        except TaskError as exc:
            log.warning(
                "task failed: %s", exc.message, extra={"category": exc.category.value, "code": exc.code}
            )
            latest = await d.store.get(self.task_id) or doc
            status = Status.CANCELED if exc.category is ErrorCategory.CANCELED else Status.FAILED
            return await self.finish(latest, status, error=exc.info())

    async def _drive(self, doc: TaskDoc, spec: ModelSpec) -> Status:
        d = self.deps
        if doc.get("cancel_requested") and not doc.get("provider_task_id"):
            return await self.finish(doc, Status.CANCELED, error=_canceled())
        self._check_deadline(doc)
        holder = f"{d.leases.holder_prefix}:{self.task_id}"
        while True:
            pinned = doc.get("credential") if doc.get("provider_task_id") else None
            waiting = utcnow()
            async with self.slots.slot(holder, preferred=pinned) as cred:
                d.metrics.stage_duration.labels(self.provider.name, "slot_wait").observe(
                    (utcnow() - waiting).total_seconds()
                )
                if not doc.get("provider_task_id"):
                    self._check_deadline(doc)  # waiting for the slot may have taken a while
                    try:
                        doc = await self._submit(doc, spec, cred)
                    except TaskError as exc:
                        if exc.category not in (ErrorCategory.AUTH, ErrorCategory.QUOTA):
                            raise
                        # The key is at fault, not the task: rotate it out and try the next one.
                        self.slots.take_out(cred, exc)
                        if not self.slots.active():
                            raise
                        doc = await d.store.get(self.task_id) or doc
                        continue
                poll = await self._poll_until_done(doc, spec, cred)
            break
        if poll.state is ProviderState.CANCELED:
            return await self.finish(doc, Status.CANCELED, error=_canceled())
        if poll.state is ProviderState.FAILED:
            error = poll.error or ErrorInfo(
                category=ErrorCategory.PROVIDER_ERROR, code="failed", message="the provider reported failure"
            )
            return await self.finish(doc, Status.FAILED, error=error)
        started = utcnow()
        result = await self._download(doc, spec, poll)
        d.metrics.stage_duration.labels(self.provider.name, "download").observe(
            (utcnow() - started).total_seconds()
        )
        return await self.finish(doc, Status.COMPLETED, result=result)

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

    async def _submit(self, doc: TaskDoc, spec: ModelSpec, cred: Credential) -> TaskDoc:
        d = self.deps
        # A stored marker means an earlier submit may have reached the provider; it is set just before each
        # request and cleared when the provider's answer was a definite "no".
        ambiguous = bool(doc.get("submit_started_at"))
        params = doc["parameters"]

        async def submit_once() -> str:
            nonlocal ambiguous
            await self._may_submit()
            if ambiguous:
                self._submit_unknown()
            await self.slots.before_submit(cred)
            await d.store.update(self.task_id, {"submit_started_at": utcnow(), "credential": cred.name})
            self.outside_submit.clear()
            try:
                return await self.provider.submit(cred, spec, params)
            except TaskError as exc:
                self.outside_submit.set()
                ambiguous = exc.code in AMBIGUOUS_SUBMIT_CODES
                raise

        try:
            provider_task_id = await self._with_retries(doc, "submit", submit_once)
        except TaskError:
            if not ambiguous:
                await d.store.update(self.task_id, {"submit_started_at": None})
            raise
        except BaseException:
            self.outside_submit.set()
            raise
        now = utcnow()
        try:
            updated = await self._record_submission(provider_task_id, cred, now)
        finally:
            self.outside_submit.set()
        created_at: datetime = updated["created_at"]
        d.metrics.stage_duration.labels(self.provider.name, "queue_wait").observe(
            (now - created_at).total_seconds()
        )
        log.info("submitted", extra={"provider_task_id": provider_task_id, "credential": cred.name})
        await d.events.emit(updated, Status.PROCESSING, progress=0.0)
        return updated

    async def _may_submit(self) -> None:
        """Last checks before money is spent: still ours, not canceled, not shutting down."""
        d = self.deps
        if d.draining.is_set():
            raise HandBack("shutting down: the task goes back to the queue unsubmitted")
        if not await d.leases.holds(self.claim, d.leases.holder_prefix):
            raise HandBack("lost the claim on this task (it expired during an outage)")
        latest = await d.store.get(self.task_id)
        if latest is not None and latest.get("cancel_requested"):
            raise TaskError("the task was canceled before it was submitted", category=ErrorCategory.CANCELED)

    async def _record_submission(self, provider_task_id: str, cred: Credential, now: datetime) -> TaskDoc:
        """Store the provider's task id, waiting out a database outage: losing it would mean paying twice."""
        outage = 0
        while True:
            try:
                updated = await self.deps.store.update(
                    self.task_id,
                    {"provider_task_id": provider_task_id, "credential": cred.name, "submitted_at": now},
                    status=Status.PROCESSING,
                )
            except Exception as exc:
                if not is_outage(exc):
                    raise
                outage += 1
                log.warning("database unavailable while recording a submission (%s); retrying", exc)
                await asyncio.sleep(outage_delay(outage, exc))
                continue
            if updated is None:
                raise TaskError(f"task {self.task_id} vanished from the store", code="unknown_task")
            return updated

    # -- poll ---------------------------------------------------------------------------------------------------

    async def _poll_until_done(self, doc: TaskDoc, spec: ModelSpec, cred: Credential) -> PollResult:
        d = self.deps
        s = d.settings
        delay = s.poll_first_delay_s if s.poll_first_delay_s is not None else self.provider.first_poll_delay_s
        cap = min(s.poll_max_interval_s, self.provider.max_poll_interval_s)
        provider_task_id: str = doc["provider_task_id"]
        last_progress = float(doc.get("progress") or 0.0)
        started = utcnow()
        while True:
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))
            delay = min(cap, max(delay, 0.5) * 1.5)
            latest = await d.store.get(self.task_id) or doc
            if latest.get("cancel_requested"):
                await self._cancel_at_provider(spec, cred, provider_task_id)
                return PollResult(ProviderState.CANCELED)
            self._check_deadline(latest)

            async def poll_once() -> PollResult:
                await self.slots.before_poll(cred)
                return await self.provider.poll(cred, spec, provider_task_id, doc["parameters"])

            poll = await self._with_retries(latest, "poll", poll_once)
            if poll.state.terminal:
                d.metrics.stage_duration.labels(self.provider.name, "provider").observe(
                    (utcnow() - started).total_seconds()
                )
                return poll
            if poll.progress is not None and poll.progress > last_progress + 1e-6 and poll.progress < 1.0:
                last_progress = poll.progress
                updated = await d.store.update(self.task_id, {"progress": last_progress})
                if updated is not None:
                    await d.events.emit(
                        updated, Status.PROCESSING, event_type="task.progress", progress=last_progress
                    )

    async def _cancel_at_provider(self, spec: ModelSpec, cred: Credential, provider_task_id: str) -> bool:
        try:
            return await self.provider.cancel(cred, spec, provider_task_id)
        except TaskError as exc:
            log.warning("provider cancel failed: %s", exc.message)
            return False

    def _check_deadline(self, doc: TaskDoc) -> None:
        deadline: datetime | None = doc.get("deadline")
        if deadline is not None and utcnow() > deadline:
            raise TaskError(
                "the task passed its deadline (timeout_s)", category=ErrorCategory.TIMEOUT, code="deadline"
            )

    # -- retries ------------------------------------------------------------------------------------------------

    async def _with_retries(self, doc: TaskDoc, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient provider faults until they stop or the task's deadline passes."""
        attempt = 0
        while True:
            try:
                result = await call()
                self.deps.metrics.provider_requests.labels(self.provider.name, operation, "ok").inc()
                return result
            except TaskError as exc:
                self.deps.metrics.provider_requests.labels(
                    self.provider.name, operation, exc.category.value
                ).inc()
                if not exc.retryable:
                    raise
                wait = self.deps.retry.delay(attempt, exc.retry_after)
                deadline: datetime | None = doc.get("deadline")
                if deadline is not None and (deadline - utcnow()).total_seconds() < wait:
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
                await asyncio.sleep(wait)

    # -- download -----------------------------------------------------------------------------------------------

    async def _download(self, doc: TaskDoc, spec: ModelSpec, poll: PollResult) -> Result:
        d = self.deps
        when = datetime.now()  # local time, as the original service named its files
        images: list[ImageInfo] = []
        failed = list(poll.failed_images)
        for image in poll.images:
            try:
                saved = await self._download_one(image.url, image.index, when)
            except DownloadError as exc:
                failed.append({"index": image.index, "code": exc.code, "message": exc.message})
                continue
            d.metrics.download_bytes.labels(self.provider.name).inc(saved.bytes)
            images.append(
                ImageInfo(
                    index=image.index,
                    url=image.url,
                    local_path=str(saved.path),
                    seed=image.seed,
                    auditStatus=image.audit_status,
                    sha256=saved.sha256,
                    bytes=saved.bytes,
                    width=saved.width,
                    height=saved.height,
                    content_type=saved.content_type,
                )
            )
        if not images:
            reason = failed[0]["message"] if failed else "the provider delivered no image"
            raise DownloadError(f"no image could be downloaded: {reason}", code="no_images")
        described = self.provider.describe(spec, doc["parameters"])
        info = dict(poll.info)
        usage = info.pop("usage", None) or {"image_count": len(images)}
        return Result(
            id=doc["provider_task_id"],
            model=doc["model"],
            created=f"{when:%Y-%m-%d %H:%M:%S}",
            images=images,
            prompt=described.get("prompt"),
            width=described.get("width", images[0].width),
            height=described.get("height", images[0].height),
            usage=usage,
            failed_images=failed,
            cost=round(spec.price_per_image * len(images), 6),
            **info,
        )

    async def _download_one(self, url: str, index: int, when: datetime) -> Any:
        d = self.deps
        attempt = 0
        while True:
            try:
                return await d.downloader.download(url, self.provider.name, index, when)
            except DownloadError as exc:
                attempt += 1
                if not exc.retryable or attempt >= d.retry.download_attempts:
                    raise
                wait = d.retry.delay(attempt)
                log.info("retrying image download in %.1fs: %s", wait, exc.message)
                await asyncio.sleep(wait)

    # -- finish -------------------------------------------------------------------------------------------------

    async def finish(
        self, doc: TaskDoc, status: Status, *, result: Result | None = None, error: ErrorInfo | None = None
    ) -> Status:
        """Store the terminal state with its event, then publish the event (confirmed by the broker)."""
        d = self.deps
        started = utcnow()
        updated = await d.events.finish(doc, status, result=result, error=error)
        d.metrics.stage_duration.labels(doc["provider"], "publish").observe(
            (utcnow() - started).total_seconds()
        )
        d.metrics.tasks.labels(doc["provider"], doc["model"], status.value).inc()
        if error is not None:
            d.metrics.task_errors.labels(doc["provider"], error.category.value).inc()
        created: datetime | None = updated.get("created_at")
        if created is not None:
            d.metrics.task_duration.labels(doc["provider"], status.value).observe(
                (utcnow() - created).total_seconds()
            )
        log.info("task %s", status.value, extra={"category": error.category.value if error else None})
        return status


def _canceled() -> ErrorInfo:
    return ErrorInfo(category=ErrorCategory.CANCELED, code="canceled", message="the task was canceled")
