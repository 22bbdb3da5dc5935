"""The contract harness: imaged's real provider clients talking HTTP to a real emulator, and the emulator's controls.

A :class:`Client` is an ``AliyunProvider`` or ``LiblibProvider`` built from ``Settings`` that point at the emulator;
it runs a task the way imaged does (validate -> submit -> poll until terminal) and checks every error it sees for
leaked secrets. :class:`Emulator` drives the emulator through its ``/_sim`` HTTP routes (faults, settings, stats)
and, for the state table, moves a task's clock so that each provider state is observed deterministically.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from imaged.catalog import Catalog, ModelSpec
from imaged.contract import ErrorCategory, ErrorInfo
from imaged.errors import ProviderError
from imaged.providers.base import Credential, PollResult, Provider, ProviderState
from imaged.simulator import Simulator

API_KEY = "sk-sim"
ACCESS_KEY = "sim-access"
SECRET_KEY = "sim-secret"
WRONG_API_KEY = "sk-wrong-key-of-the-contract-tests"
WRONG_SECRET_KEY = "wrong-secret-of-the-contract-tests"
TASK_SECONDS = 0.15
"""How long an emulated task runs, unless a test needs otherwise."""
POLL_INTERVAL_S = 0.01
RUN_DEADLINE_S = 10.0
INITIAL_BALANCE = 1_000_000
"""The emulator's default LiblibAI points balance."""

CATALOG = Catalog.load()
PROVIDERS = ("aliyun", "liblibai")

BASIC: dict[str, tuple[str, dict[str, Any]]] = {
    "aliyun": ("wanx2.1-t2i-turbo", {"prompt": "a red fox in the snow"}),
    "liblibai": ("star-3-alpha-t2i", {"prompt": "a red fox in the snow"}),
}
"""A plain task of each provider, for the scenarios that are not about one model."""
COUNT_KEY = {"aliyun": "n", "liblibai": "imgCount"}
"""The parameter that asks for several images."""

Signer = Callable[[str, str, str], dict[str, str]]
"""Replaces ``liblibai.signed_query(path, access_key, secret_key)`` for the signature-rejection tests."""


class Secrets:
    """The secrets the clients hold in one test (keys, and every signature the LiblibAI client computed)."""

    def __init__(self) -> None:
        self.values: set[str] = {API_KEY, SECRET_KEY, WRONG_API_KEY, WRONG_SECRET_KEY}
        self.queries: list[dict[str, str]] = []
        self.signer: Signer | None = None

    def record(self, query: Mapping[str, str]) -> None:
        self.queries.append(dict(query))
        self.values.add(query["Signature"])

    def assert_absent(self, *texts: str) -> None:
        for text in texts:
            leaked = sorted(secret for secret in self.values if secret in text)
            assert not leaked, f"{len(leaked)} secret(s) in an error message: {text!r}"


@dataclass(frozen=True)
class Task:
    """A task submitted through a client: its catalog entry, validated parameters and provider task id."""

    spec: ModelSpec
    params: dict[str, Any]
    id: str


@dataclass(frozen=True)
class Run:
    """Every poll of a task, until the first terminal one."""

    polls: list[PollResult]

    @property
    def last(self) -> PollResult:
        return self.polls[-1]

    @property
    def states(self) -> list[ProviderState]:
        """The states seen, in order, repeats collapsed."""
        seen: list[ProviderState] = []
        for poll in self.polls:
            if not seen or seen[-1] is not poll.state:
                seen.append(poll.state)
        return seen


@dataclass
class Emulator:
    """The emulator under test and the HTTP session every client of the test shares."""

    sim: Simulator
    session: aiohttp.ClientSession

    async def _control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, f"{self.sim.url}{path}", json=body) as response:
            payload = await response.json()
            assert response.status == 200, payload
            return payload

    async def fault(self, provider: str, stage: str, kind: str, **extra: Any) -> None:
        """Inject a fault (``POST /_sim/faults``); it fires once unless ``count`` or ``rate`` says otherwise."""
        spec = {"provider": provider, "stage": stage, "kind": kind, **extra}
        if "rate" not in spec:
            spec.setdefault("count", 1)
        await self._control("POST", "/_sim/faults", spec)

    async def faults(self) -> list[dict[str, Any]]:
        """The faults injected so far, with their hits (``GET /_sim/faults``)."""
        payload = await self._control("GET", "/_sim/faults")
        faults: list[dict[str, Any]] = payload["faults"]
        return faults

    async def configure(self, **changes: Any) -> None:
        """Change emulator settings at run time (``POST /_sim/config``)."""
        await self._control("POST", "/_sim/config", changes)

    async def stats(self, provider: str) -> dict[str, Any]:
        """One provider's counters from ``GET /_sim/stats``."""
        payload = await self._control("GET", "/_sim/stats")
        counters: dict[str, Any] = payload["providers"][provider]
        return counters

    async def stats_text(self) -> str:
        async with self.session.get(f"{self.sim.url}/_sim/stats") as response:
            return await response.text()

    def place(self, task_id: str, fraction: float) -> None:
        """Move a task's clock so that it is ``fraction`` of the way through (1.0: finished)."""
        task = self.sim.state.tasks[task_id]
        task.started = time.monotonic() - fraction * task.duration


@dataclass
class Client:
    """One of imaged's provider clients, pointed at the emulator."""

    provider: Provider
    credential: Credential
    emu: Emulator
    secrets: Secrets

    @property
    def name(self) -> str:
        return self.provider.name

    def spec(self, model: str | None = None, **changes: Any) -> ModelSpec:
        """A catalog entry (by default the provider's basic model), optionally altered."""
        found = CATALOG.get(model or BASIC[self.name][0])
        assert found is not None, model
        return found.model_copy(update=changes) if changes else found

    def validate(self, spec: ModelSpec, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.provider.validate(spec, dict(BASIC[self.name][1] if params is None else params))

    async def submit(
        self, model: str | None = None, params: Mapping[str, Any] | None = None, **changes: Any
    ) -> Task:
        """validate -> submit, as imaged does."""
        spec = self.spec(model, **changes)
        validated = self.validate(spec, params)
        task_id = await self.provider.submit(self.credential, spec, validated)
        assert isinstance(task_id, str) and task_id
        return Task(spec, validated, task_id)

    async def poll(self, task: Task) -> PollResult:
        result = await self.provider.poll(self.credential, task.spec, task.id, task.params)
        if result.error is not None:
            self.secrets.assert_absent(result.error.model_dump_json())
        return result

    async def cancel(self, task: Task) -> bool:
        return await self.provider.cancel(self.credential, task.spec, task.id)

    async def run(self, task: Task, *, deadline: float = RUN_DEADLINE_S) -> Run:
        """Poll until a terminal state (failing the test if none comes within ``deadline`` seconds)."""
        polls: list[PollResult] = []
        end = time.monotonic() + deadline
        while True:
            polls.append(await self.poll(task))
            if polls[-1].state.terminal:
                return Run(polls)
            assert time.monotonic() < end, f"not terminal after {deadline} s: {Run(polls).states}"
            await asyncio.sleep(POLL_INTERVAL_S)

    async def fails(
        self,
        call: Callable[[], Awaitable[object]],
        category: ErrorCategory,
        *,
        retryable: bool,
        code: str | None = None,
    ) -> ProviderError:
        """``call`` raises a ProviderError of this category and retryability, without a secret in it."""
        with pytest.raises(ProviderError) as caught:
            await call()
        exc = caught.value
        assert (exc.category, exc.retryable) == (category, retryable), exc.message
        if code is not None:
            assert exc.code == code, exc.message
        self.secrets.assert_absent(str(exc), exc.message, exc.info().model_dump_json())
        return exc

    async def outcome(self, task: Task) -> tuple[str, ErrorInfo | None, Run | None]:
        """How a task ends for imaged: ``("reported", error, run)`` when a poll returned a terminal state, or
        ``("raised", error, None)`` when a poll raised a non-retryable error (imaged fails the task with it)."""
        try:
            run = await self.run(task)
        except ProviderError as exc:
            assert not exc.retryable, exc.message
            self.secrets.assert_absent(exc.message)
            return "raised", exc.info(), None
        return "reported", run.last.error, run
