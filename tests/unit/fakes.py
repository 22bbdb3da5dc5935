"""In-memory implementations of imaged's own interfaces, for unit tests of jobs and limits.

No broker, no database, no HTTP: a task store that applies updates the way MongoDB would, an event sink that
keeps what it is given, claims in a dict, a scriptable provider and a downloader that writes nothing. The fakes
can share one journal (a list of strings) so that a test can assert the order of everything a job did.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import SecretStr

from imaged.cancels import CancelBoard
from imaged.catalog import Catalog, ModelSpec, Price
from imaged.claims import Claim, Claims, ClaimState
from imaged.contract import Status, utcnow
from imaged.errors import DownloadError
from imaged.events import EventPublisher, EventSink
from imaged.images import ImageDownloader, SavedImage
from imaged.job import Job, JobDeps
from imaged.limits import ProviderLimits
from imaged.metrics import Metrics
from imaged.providers.base import (
    Credential,
    PollResult,
    Provider,
    ProviderImage,
    ProviderSettings,
    ProviderState,
)
from imaged.settings import Settings
from imaged.shares import Shares
from imaged.storage import LocalStore
from imaged.store import DeleteImages, TaskStore, image_urls
from imaged.task import Task

FAKE_MODEL = "fake-t2i"
PRICE_PER_IMAGE = 0.14
ME = "replica-a"
OTHER = "replica-b"

# --- task store ------------------------------------------------------------------------------------------------

READS = frozenset({"get", "list", "count"})
WRITES = frozenset({"create", "save", "request_cancel", "purge_finished"})


def apply_update(doc: dict[str, Any], update: dict[str, Any]) -> None:
    """Apply a MongoDB update document (``$set``, ``$inc``, ``$push``; dotted paths) to a document in place."""
    for operator, changes in update.items():
        for path, value in changes.items():
            *parents, key = path.split(".")
            target = doc
            for part in parents:
                target = target.setdefault(part, {})
            if operator == "$set":
                target[key] = copy.deepcopy(value)
            elif operator == "$inc":
                target[key] = target.get(key, 0) + value
            elif operator == "$push":
                target.setdefault(key, []).append(copy.deepcopy(value))
            else:
                raise ValueError(f"update operator {operator} is not supported by the in-memory store")


class MemoryTaskStore(TaskStore):
    """Task documents in a dict, written through :meth:`TaskStore.update_for` like the MongoDB store.

    ``calls`` counts the calls per method; ``save_failures`` holds exceptions the next saves raise (an outage).
    """

    def __init__(self, journal: list[str] | None = None) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.journal = journal if journal is not None else []
        self.save_failures: deque[BaseException] = deque()

    @property
    def reads(self) -> int:
        return sum(n for method, n in self.calls.items() if method in READS)

    @property
    def writes(self) -> int:
        return sum(n for method, n in self.calls.items() if method in WRITES)

    def put(self, task: Task) -> None:
        """Store a task as an earlier process did (not counted)."""
        self.docs[task.id] = copy.deepcopy(task.to_doc())

    def stored(self, task_id: str) -> Task:
        """The task as stored now (not counted)."""
        return Task.from_doc(copy.deepcopy(self.docs[task_id]))

    def _called(self, method: str, entry: str) -> None:
        self.calls[method] += 1
        self.journal.append(f"store.{method} {entry}")

    async def create(self, task: Task) -> tuple[Task, bool]:
        self._called("create", task.id)
        if task.id in self.docs:
            return self.stored(task.id), False
        self.put(task)
        return task, True

    async def get(self, task_id: str) -> Task | None:
        self._called("get", task_id)
        return self.stored(task_id) if task_id in self.docs else None

    async def save(
        self,
        task_id: str,
        fields: dict[str, Any],
        *,
        status: Status | None = None,
        inc: dict[str, int] | None = None,
    ) -> None:
        self._called("save", f"{task_id} {status.value if status else '-'}")
        if self.save_failures:
            raise self.save_failures.popleft()
        doc = self.docs.get(task_id)
        if doc is not None:
            apply_update(doc, self.update_for(fields, status, inc))

    async def request_cancel(self, task_id: str) -> Task | None:
        self._called("request_cancel", task_id)
        doc = self.docs.get(task_id)
        if doc is None:
            return None
        apply_update(doc, self.update_for({"cancel_requested": True, "cancel_requested_at": utcnow()}))
        return self.stored(task_id)

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int = 50,
        skip: int = 0,
    ) -> list[Task]:
        self._called("list", f"{owner} {status}")
        found = [doc for doc in self.docs.values() if _matches(doc, owner, status)]
        found.sort(key=lambda doc: (doc["created_at"], doc["_id"]), reverse=True)
        return [Task.from_doc(copy.deepcopy(doc)) for doc in found[skip : skip + limit]]

    async def count(self, *, owner: str | None = None, status: str | None = None) -> int:
        self._called("count", f"{owner} {status}")
        return sum(1 for doc in self.docs.values() if _matches(doc, owner, status))

    async def latest_with_fingerprint(self, fingerprint: str, *, since: datetime) -> Task | None:
        found = [
            doc
            for doc in self.docs.values()
            if doc.get("fingerprint") == fingerprint and doc["created_at"] >= since
        ]
        newest = max(found, key=lambda doc: doc["created_at"], default=None)
        return None if newest is None else Task.from_doc(copy.deepcopy(newest))

    async def purge_finished(self, *, before: datetime, delete_images: DeleteImages | None = None) -> int:
        self._called("purge_finished", before.isoformat())
        terminal = {s.value for s in Status if s.terminal}
        gone = [
            task_id
            for task_id, doc in self.docs.items()
            if doc.get("status") in terminal
            and doc.get("finished_at") is not None
            and doc["finished_at"] < before
        ]
        if delete_images is not None:
            await delete_images([url for task_id in gone for url in image_urls(self.docs[task_id])])
        for task_id in gone:
            del self.docs[task_id]
        return len(gone)


def _matches(doc: dict[str, Any], owner: str | None, status: str | None) -> bool:
    return (owner is None or doc.get("owner") == owner) and (status is None or doc.get("status") == status)


# --- events ----------------------------------------------------------------------------------------------------


class MemoryEvents(EventSink):
    """Every published event (a copy) with its ``reply_to``, in order."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.published: list[tuple[dict[str, Any], str | None]] = []
        self.journal = journal if journal is not None else []

    async def publish(self, event: dict[str, Any], *, reply_to: str | None = None) -> None:
        self.published.append((copy.deepcopy(event), reply_to))
        self.journal.append(f"events.publish {event['type']} {event['seq']}")

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for event, _ in self.published]

    def summary(self) -> list[tuple[str, int]]:
        """(type, seq) of every event, in order."""
        return [(event["type"], event["seq"]) for event in self.events]


# --- claims ----------------------------------------------------------------------------------------------------


@dataclass
class StoredClaim:
    holder: str  # "" once handed back
    state: ClaimState


class MemoryClaims(Claims):
    """Claims in a dict, with the semantics of ``MongoClaims``: a claim of a live replica other than this one
    (``me``) is not taken; a handed-back claim, or one whose holder is gone, is taken over with its state; this
    replica's own claim is re-entrant. Holders in ``live`` are alive; :meth:`hold_elsewhere` sets another up."""

    def __init__(self, me: str = ME, journal: list[str] | None = None) -> None:
        self.me = me
        self.claims: dict[str, StoredClaim] = {}
        self.live: set[str] = {me}
        self.calls: list[tuple[str, str, ClaimState | None]] = []
        self.journal = journal if journal is not None else []

    def hold_elsewhere(
        self, task_id: str, holder: str = OTHER, state: ClaimState = ClaimState.CLAIMED, *, alive: bool = True
    ) -> None:
        """Another replica holds the task's claim (alive or gone)."""
        self.claims[task_id] = StoredClaim(holder, state)
        if alive:
            self.live.add(holder)
        else:
            self.live.discard(holder)

    def _called(self, method: str, task_id: str, state: ClaimState | None = None) -> None:
        self.calls.append((method, task_id, state))
        self.journal.append(f"claims.{method} {task_id}" + (f" {state.value}" if state else ""))

    def takes(self, task_id: str) -> int:
        return sum(1 for method, tid, _ in self.calls if method == "take" and tid == task_id)

    async def insert(self, task_id: str, state: ClaimState) -> bool:
        self._called("insert", task_id, state)
        if task_id in self.claims:
            return False
        self.claims[task_id] = StoredClaim(self.me, state)
        return True

    async def take(self, task_id: str, state: ClaimState, *, reentrant: bool = True) -> Claim:
        self._called("take", task_id, state)
        previous: ClaimState | None = None
        existing = self.claims.get(task_id)
        if existing is not None:
            known = existing.state
            if existing.holder == self.me:
                if not reentrant:
                    return Claim(False, known, existing.holder)
                if known is not ClaimState.SUBMITTING and state is ClaimState.SUBMITTING:
                    existing.state = state
                return Claim(True, known)
            if existing.holder and existing.holder in self.live:
                return Claim(False, known, existing.holder)
            previous = known  # handed back, or its holder is gone: taken over with what it knew
        self.claims[task_id] = StoredClaim(self.me, state)
        return Claim(True, previous)

    async def mark(self, task_id: str, state: ClaimState) -> None:
        self._called("mark", task_id, state)
        existing = self.claims.get(task_id)
        if existing is not None and existing.holder == self.me:
            existing.state = state

    async def hand_back(self, task_id: str) -> None:
        self._called("hand_back", task_id)
        existing = self.claims.get(task_id)
        if existing is not None and existing.holder == self.me:
            existing.holder = ""

    async def still_held(self, task_id: str) -> bool:
        self._called("still_held", task_id)
        existing = self.claims.get(task_id)
        return existing is not None and existing.holder == self.me


# --- provider --------------------------------------------------------------------------------------------------


def make_credential(name: str = "key-1", *, max_in_flight: int = 1) -> Credential:
    return Credential(
        name=name,
        key=SecretStr(f"sk-{name}"),
        secret=None,
        base_url="https://fake.invalid",
        max_in_flight=max_in_flight,
    )


def image_url(index: int) -> str:
    return f"https://images.fake.invalid/out/{index}.png"


def succeeded(count: int = 2, **info: Any) -> PollResult:
    """A finished provider task with ``count`` images (``info`` is copied onto the result)."""
    images = [ProviderImage(index=i, url=image_url(i), seed=1000 + i) for i in range(count)]
    return PollResult(ProviderState.SUCCEEDED, progress=1.0, images=images, info=dict(info))


def running(progress: float | None = None) -> PollResult:
    return PollResult(ProviderState.RUNNING, progress=progress)


class FakeProvider(Provider):
    """A provider that answers from scripts and records every call.

    ``submit_script``: provider task ids to return or exceptions to raise, in order (when empty: ``pt-<n>``).
    ``poll_script``: poll results or exceptions, in order (when empty: ``idle_poll``, a running task).
    """

    name: ClassVar[str] = "fake"
    first_poll_delay_s: ClassVar[float] = 0.0
    max_poll_interval_s: ClassVar[float] = 0.005
    #: images a task asks for unless its parameters say ``n``
    default_images = 4

    def __init__(
        self,
        settings: ProviderSettings | None = None,
        credentials: list[Credential] | None = None,
        journal: list[str] | None = None,
    ) -> None:
        # No super().__init__: it wants an aiohttp session, and the fake makes no HTTP calls.
        # (images_requested: the base class reads "n"; without one the fake asks for default_images.)
        self.settings = settings or ProviderSettings()
        self.creds = credentials if credentials is not None else [make_credential()]
        self.journal = journal if journal is not None else []
        self.submit_script: deque[str | BaseException] = deque()
        self.poll_script: deque[PollResult | BaseException] = deque()
        self.idle_poll = running()
        self.cancel_answer = True
        #: called with the number of the submit (1, 2, ...) before it is answered
        self.on_submit: Callable[[int], None] | None = None
        #: (credential name, parameters) of every submit, failed ones included
        self.submits: list[tuple[str, dict[str, Any]]] = []
        #: provider task ids of the submits that succeeded
        self.accepted: list[str] = []
        #: (credential name, provider task id) of every poll / cancel
        self.polls: list[tuple[str, str]] = []
        self.cancels: list[tuple[str, str]] = []

    def credentials(self) -> list[Credential]:
        return list(self.creds)

    def images_requested(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        n = params.get("n")
        return n if isinstance(n, int) else self.default_images

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        return dict(parameters)

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params.get("prompt")}

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        self.submits.append((credential.name, dict(params)))
        self.journal.append(f"provider.submit {credential.name}")
        if self.on_submit is not None:
            self.on_submit(len(self.submits))
        outcome = self.submit_script.popleft() if self.submit_script else f"pt-{len(self.submits)}"
        if isinstance(outcome, BaseException):
            raise outcome
        self.accepted.append(outcome)
        return outcome

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        self.polls.append((credential.name, provider_task_id))
        self.journal.append(f"provider.poll {provider_task_id}")
        outcome = self.poll_script.popleft() if self.poll_script else self.idle_poll
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def cancel(self, credential: Credential, spec: ModelSpec, provider_task_id: str) -> bool:
        self.cancels.append((credential.name, provider_task_id))
        self.journal.append(f"provider.cancel {provider_task_id}")
        return self.cancel_answer


# --- downloads -------------------------------------------------------------------------------------------------


class FakeDownloader(ImageDownloader):
    """Pretends to download: a :class:`SavedImage` per URL, nothing written. :meth:`fail` makes a URL fail."""

    def __init__(self, journal: list[str] | None = None) -> None:
        # No super().__init__: it wants an aiohttp session, and the fake makes no HTTP calls.
        self.image_dir = Path("images").resolve()
        self.store = LocalStore(self.image_dir)  # never written to: only asked for links (none, locally)
        self.journal = journal if journal is not None else []
        self.calls: list[str] = []
        self._failures: dict[str, tuple[DownloadError, int | None]] = {}

    def fail(self, url: str, error: DownloadError, *, times: int | None = None) -> None:
        """Downloads of ``url`` raise ``error``: ``times`` times, or always (None)."""
        self._failures[url] = (error, times)

    async def download(self, url: str, name_of: Callable[[str], str], *, side_max: int = 8192) -> SavedImage:
        self.calls.append(url)
        self.journal.append(f"download {url}")
        failure = self._failures.get(url)
        if failure is not None:
            error, times = failure
            if times is None or times > 0:
                if times is not None:
                    self._failures[url] = (error, times - 1)
                raise error
        data = url.encode()
        path = self.image_dir / name_of("png")
        index = int(path.name.split("_")[-2])  # {provider}_{date}_{time}_{index}_{token}.png
        return SavedImage(
            storage_url=path.as_uri(),
            local_path=str(path),
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=1000 + index,
            width=64,
            height=48,
            content_type="image/png",
        )


# --- a job with everything it needs ----------------------------------------------------------------------------


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"poll_first_delay_s": 0.0, "poll_max_interval_s": 0.005}
    values.update(overrides)
    return Settings.model_validate(values)


def make_catalog() -> Catalog:
    spec = ModelSpec(
        name=FAKE_MODEL,
        provider=FakeProvider.name,
        kind="text-to-image",
        endpoint="/generate",
        price=Price(per_image=PRICE_PER_IMAGE),
    )
    return Catalog({FAKE_MODEL: spec})


@dataclass
class Harness:
    """The dependencies of jobs for the fake provider, all in memory, sharing one journal."""

    settings: Settings
    journal: list[str]
    store: MemoryTaskStore
    sink: MemoryEvents
    claims: MemoryClaims
    cancels: CancelBoard
    provider: FakeProvider
    downloader: FakeDownloader
    metrics: Metrics
    limits: ProviderLimits
    deps: JobDeps

    def add_task(self, task_id: str = "t1", **changes: Any) -> Task:
        """Store a task as intake does (pending, ``seq`` 1 for its task.pending event), with ``changes``."""
        now = utcnow()
        task = Task(
            id=task_id,
            status=Status.PENDING,
            model=FAKE_MODEL,
            provider=FakeProvider.name,
            created_at=now,
            updated_at=now,
            parameters={"prompt": "a red fox in the snow"},
            request_parameters={"prompt": "a red fox in the snow"},
            correlation_id=f"corr-{task_id}",
            reply_to="caller.replies",
            metadata={"caller": "unit"},
            seq=1,
            deadline=now + timedelta(seconds=600),
            history=[{"status": Status.PENDING.value, "at": now}],
        )
        task = dataclasses.replace(task, **changes)
        self.store.put(task)
        return task

    def job(self, task_id: str = "t1", *, resumed: bool = False, snapshot: Task | None = None) -> Job:
        return Job(self.deps, self.provider, self.limits, task_id, resumed=resumed, snapshot=snapshot)

    async def run(
        self,
        task_id: str = "t1",
        *,
        resumed: bool = False,
        snapshot: Task | None = None,
        within: float = 5.0,
    ) -> Status:
        async with asyncio.timeout(within):
            return await self.job(task_id, resumed=resumed, snapshot=snapshot).run()

    def sample(self, name: str, **labels: str) -> float:
        """A metric's current value (0.0 when the series does not exist)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def provider_requests(self, operation: str) -> float:
        """``imaged_provider_requests_total`` of one operation, summed over its outcomes."""
        return sum(
            sample.value
            for metric in self.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "imaged_provider_requests_total" and sample.labels["operation"] == operation
        )


def build(
    *,
    credentials: list[Credential] | None = None,
    submit_per_second: float = 1000.0,
    cooldown_s: float = 600.0,
    **settings: Any,
) -> Harness:
    """A harness whose limits are a replica alone (:class:`Shares`); ``settings`` override the defaults."""
    journal: list[str] = []
    config = make_settings(**settings)
    store = MemoryTaskStore(journal)
    sink = MemoryEvents(journal)
    claims = MemoryClaims(journal=journal)
    cancels = CancelBoard()
    provider = FakeProvider(None, credentials, journal)
    downloader = FakeDownloader(journal)
    metrics = Metrics()
    limits = ProviderLimits(
        Shares(),
        provider.name,
        provider.credentials(),
        submit_per_second,
        cooldown_s=cooldown_s,
        metrics=metrics,
    )
    deps = JobDeps(
        settings=config,
        catalog=make_catalog(),
        store=store,
        events=EventPublisher(sink, store),
        downloader=downloader,
        metrics=metrics,
        claims=claims,
        cancels=cancels,
    )
    return Harness(config, journal, store, sink, claims, cancels, provider, downloader, metrics, limits, deps)


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Let the loop run until ``condition`` holds (TimeoutError after ``within`` seconds)."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.001)
