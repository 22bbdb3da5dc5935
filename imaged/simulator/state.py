"""What one emulator remembers: tasks, per-credential accounting and limits, faults, and the transport-fault guard.

Time is virtual only in the sense that a task's state is computed from the clock when someone looks: a task is in
flight from its submit until `started + duration` (or its cancel), whether or not anyone polls it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

from .config import SimulatorConfig
from .faults import (
    MALFORMED_JSON,
    OUTCOME_KINDS,
    TRANSPORT_KINDS,
    Fault,
    FaultPlan,
    Provider,
    Stage,
    abort_connection,
    hold,
)
from .images import ImageCache

logger = logging.getLogger(__name__)

PROVIDERS: tuple[Provider, ...] = ("aliyun", "liblibai")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorFactory = Callable[[int, float | None], web.StreamResponse]
"""Builds a provider's own error answer for an HTTP status (429 or 500), with an optional Retry-After."""


@dataclass(frozen=True)
class Outcome:
    """How a finished task ended, drawn once from the outcome faults when it finishes."""

    kind: str  # "success" | "fail" | "moderation" | "partial" | "status7"
    variant: str | None = None
    failed: frozenset[int] = frozenset()  # image indexes that failed or were blocked ("partial")


@dataclass(eq=False)
class SimTask:
    id: str
    provider: Provider
    credential: str
    kind: str
    model: str
    width: int
    height: int
    seeds: list[int]
    prompt: str
    submitted_at: float
    """Wall-clock time of the submit, for the timestamps the providers report."""
    started: float
    """Monotonic time of the submit; the task's clock."""
    duration: float
    extras: dict[str, Any] = field(default_factory=dict)
    canceled_at: float | None = None
    outcome: Outcome | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    @property
    def ends(self) -> float:
        return self.canceled_at if self.canceled_at is not None else self.started + self.duration

    def progress(self, now: float) -> float:
        if self.duration <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - self.started) / self.duration))

    def finished(self, now: float) -> bool:
        return self.canceled_at is not None or now >= self.started + self.duration

    def wall(self, mono: float) -> float:
        """Wall-clock time of a moment on the task's monotonic clock."""
        return self.submitted_at + (mono - self.started)


@dataclass
class Counters:
    submits: int = 0
    """Accepted submits: tasks created."""
    rejected: int = 0
    """Submits refused for their content (validation, input moderation, template, points)."""
    polls: int = 0
    cancels: int = 0
    downloads: int = 0
    auth_failures: int = 0
    signature_failures: int = 0
    rate_limited: int = 0
    concurrency_limit_hits: int = 0
    faults_injected: int = 0
    max_concurrent: int = 0

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RateLimiter:
    """Token bucket: `rate` requests per second with a burst of max(1, rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._last = time.monotonic()

    def try_acquire(self, now: float) -> bool:
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Account:
    """One credential as the provider sees it: counters, tasks in flight, submit rate, points."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.counters = Counters()
        self.points_spent = 0
        self.bucket: RateLimiter | None = None
        self._live: set[str] = set()
        self._ends: list[tuple[float, str]] = []

    def in_flight(self, now: float) -> int:
        while self._ends and self._ends[0][0] <= now:
            _, task_id = heapq.heappop(self._ends)
            self._live.discard(task_id)
        return len(self._live)

    def add(self, task: SimTask) -> None:
        self._live.add(task.id)
        heapq.heappush(self._ends, (task.ends, task.id))

    def remove(self, task_id: str) -> None:
        self._live.discard(task_id)


class SimState:
    """Everything the route handlers share; one per Simulator."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random()
        self.faults = FaultPlan(self.rng)
        self.images = ImageCache()
        self.closing = asyncio.Event()
        self.base_url: str | None = None
        self.tasks: dict[str, SimTask] = {}
        self.totals: dict[Provider, Counters] = {}
        self.accounts: dict[tuple[Provider, str], Account] = {}
        self.reset()

    def reset(self) -> None:
        """Forget tasks, stats and faults (the configuration stays)."""
        self.tasks = {}
        self.totals = {p: Counters() for p in PROVIDERS}
        self.accounts = {}
        self.faults.clear()
        self.started = time.monotonic()

    # accounting ------------------------------------------------------------------------------------------------

    def account(self, provider: Provider, label: str) -> Account:
        key = (provider, label)
        found = self.accounts.get(key)
        if found is None:
            found = self.accounts[key] = Account(label)
        return found

    def count(self, provider: Provider, label: str | None, name: str, n: int = 1) -> None:
        """Add to a counter of the provider and, when the credential is known, of that credential."""
        totals = self.totals[provider]
        setattr(totals, name, getattr(totals, name) + n)
        if label is not None:
            counters = self.account(provider, label).counters
            setattr(counters, name, getattr(counters, name) + n)

    def balance(self, account: Account) -> int:
        """Points left on a LiblibAI account (follows changes of `liblib_initial_balance`)."""
        return self.config.liblib_initial_balance - account.points_spent

    def limits(self, provider: Provider) -> tuple[int | None, float | None]:
        """(concurrency cap, submits per second) of one credential of the provider."""
        if provider == "aliyun":
            return self.config.dashscope_concurrency_limit, self.config.dashscope_submit_per_second
        return self.config.liblib_concurrency_limit, self.config.liblib_submit_per_second

    def submit_allowed(self, provider: Provider, label: str) -> bool:
        """Take a token of the credential's submit rate; False (and counted) when over the limit."""
        _, rate = self.limits(provider)
        if rate is None:
            return True
        account = self.account(provider, label)
        if account.bucket is None or account.bucket.rate != rate:
            account.bucket = RateLimiter(rate)
        if account.bucket.try_acquire(time.monotonic()):
            return True
        self.count(provider, label, "rate_limited")
        return False

    def slot_free(self, provider: Provider, label: str) -> bool:
        """Whether the credential is under its concurrency cap; counts a refusal when it is not."""
        cap, _ = self.limits(provider)
        if cap is None or self.account(provider, label).in_flight(time.monotonic()) < cap:
            return True
        self.count(provider, label, "concurrency_limit_hits")
        return False

    def in_flight(self, provider: Provider, now: float) -> int:
        return sum(a.in_flight(now) for (p, _), a in self.accounts.items() if p == provider)

    def new_task(self, *, timeout: float | None = None, **kwargs: Any) -> SimTask:
        """Create and admit a task (call right after `slot_free`, with no await in between).

        A task that would run longer than `timeout` seconds ends then instead, as timed out (LiblibAI status 7).
        """
        now = time.monotonic()
        duration = self.config.task_seconds + self.rng.uniform(0.0, self.config.jitter_seconds)
        task = SimTask(submitted_at=time.time(), started=now, duration=duration, **kwargs)
        if timeout is not None and duration > timeout:
            task.duration = timeout
            task.extras["timed_out"] = True
        self.tasks[task.id] = task
        account = self.account(task.provider, task.credential)
        account.add(task)
        self.count(task.provider, task.credential, "submits")
        account.counters.max_concurrent = max(account.counters.max_concurrent, account.in_flight(now))
        totals = self.totals[task.provider]
        totals.max_concurrent = max(totals.max_concurrent, self.in_flight(task.provider, now))
        logger.debug("%s task %s created (%.2fs, %d images)", task.provider, task.id, duration, task.count)
        return task

    def cancel(self, task: SimTask) -> None:
        task.canceled_at = time.monotonic()
        self.account(task.provider, task.credential).remove(task.id)

    def find(self, provider: Provider, task_id: str, label: str) -> SimTask | None:
        """A task of this provider and credential (another account's task is as unknown as a made-up id)."""
        task = self.tasks.get(task_id)
        if task is None or task.provider != provider or task.credential != label:
            return None
        return task

    def outcome(self, task: SimTask) -> Outcome:
        """How a finished task ended: drawn from the outcome faults the first time anyone looks."""
        if task.outcome is None and task.extras.get("timed_out"):  # the provider's own timeout, not a fault
            task.outcome = Outcome("status7")
            self._refund(task)
        if task.outcome is None:
            fault = self.faults.draw(task.provider, "poll", OUTCOME_KINDS)
            if fault is None:
                task.outcome = Outcome("success")
            else:
                self.count(task.provider, task.credential, "faults_injected")
                failed: frozenset[int] = frozenset()
                if fault.spec.kind == "partial":
                    failed = frozenset(range(task.count - max(1, task.count // 2), task.count))
                task.outcome = Outcome(fault.spec.kind, fault.spec.variant, failed)
                logger.debug("%s task %s ends with fault %s", task.provider, task.id, fault.spec.kind)
                if fault.spec.kind in ("fail", "status7"):
                    self._refund(task)
        return task.outcome

    def _refund(self, task: SimTask) -> None:
        """Give back the points frozen for a LiblibAI task that failed or timed out (nothing is charged)."""
        if task.provider == "liblibai":
            self.account(task.provider, task.credential).points_spent -= int(task.extras.get("points", 0))

    def image_base(self, request: web.Request) -> str:
        return self.config.public_url or self.base_url or str(request.url.origin())

    # transport faults ------------------------------------------------------------------------------------------

    def guarded(self, provider: Provider, stage: Stage, handler: Handler, error: ErrorFactory) -> Handler:
        """Wrap a route handler so the transport faults of (provider, stage) can replace its answer."""

        async def run(request: web.Request) -> web.StreamResponse:
            fault = self.faults.draw(provider, stage, TRANSPORT_KINDS)
            if fault is None:
                return await handler(request)
            return await self.inject(request, provider, fault, handler, error)

        return run

    async def inject(
        self,
        request: web.Request,
        provider: Provider,
        fault: Fault,
        handler: Handler,
        error: ErrorFactory,
    ) -> web.StreamResponse:
        spec = fault.spec
        self.count(provider, None, "faults_injected")
        logger.debug("fault %s/%s/%s on %s", provider, spec.stage, spec.kind, request.path)
        answer = await handler(request) if spec.phase == "after" else None
        if spec.kind == "slow":
            await hold(self.closing, fault.seconds)
            return answer if answer is not None else await handler(request)
        if spec.kind == "http_429":
            return error(429, spec.retry_after)
        if spec.kind == "http_500":
            return error(500, None)
        if spec.kind == "malformed_json":
            return web.Response(body=MALFORMED_JSON, content_type="application/json")
        if spec.kind == "timeout":
            await hold(self.closing, fault.seconds)
        abort_connection(request)  # "timeout" after holding, "reset" at once
        return web.Response(status=499)
