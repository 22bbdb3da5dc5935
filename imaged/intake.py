"""Intake: validate a request, record its task (idempotent by task id), announce it, forward it to its lane.

Requests arrive on ``<prefix>.requests`` (any AMQP publisher) or from the HTTP API, which hands them over in
process; both go through :meth:`Intake.validate` and :meth:`Intake.submit`. Invalid requests never reach a lane:
they get a ``task.failed`` event (when a task id is known) and are copied to the dead-letter queue with the reason.

A task id belongs to the tenant that created it: a request naming another tenant's task id is refused, and it
never makes imaged send that task's events again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from .broker import RESUME_HEADER, Broker, json_object
from .catalog import Catalog, ModelSpec
from .contract import ErrorInfo, Request, Status, check_plain_keys, is_valid_task_id, new_task_id, utcnow
from .delivery import DeadLetter
from .errors import InvalidRequest
from .events import EventPublisher, build_event
from .metrics import Metrics
from .provenance import SIGNATURE_HEADER, LaneSigner
from .providers.base import Provider
from .sanitize import clean_text
from .settings import Settings
from .store import TaskStore
from .task import Task

log = logging.getLogger(__name__)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """A readable one-line summary that names each offending field."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{prefix}{loc}: {err['msg']}")
    return "; ".join(parts)


def task_id_from_message_id(message_id: str | None) -> str | None:
    """Publishers may set the AMQP ``message_id`` as idempotency key; ids outside our alphabet are hashed."""
    if not message_id:
        return None
    if is_valid_task_id(message_id):
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()[:24]


class TaskIdTaken(InvalidRequest):
    """The task id belongs to another tenant's task."""


@dataclass(frozen=True)
class Submitted:
    task: Task
    created: bool


class Intake:
    """Consumer of ``<prefix>.requests``, and the one place that decides the fate of a request."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        store: TaskStore,
        events: EventPublisher,
        catalog: Catalog,
        providers: dict[str, Provider],
        metrics: Metrics,
        signer: LaneSigner,
        *,
        check_webhook: Callable[[str], None] | None = None,
    ) -> None:
        """``check_webhook`` refuses (ValueError) a webhook URL deliveries could never reach."""
        self.settings = settings
        self.broker = broker
        self.store = store
        self.events = events
        self.catalog = catalog
        self.providers = providers
        self.metrics = metrics
        self.signer = signer
        self.check_webhook = check_webhook

    # -- AMQP -----------------------------------------------------------------------------------------------------

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """A request from the queue; raises :class:`DeadLetter` for an invalid one (see ``delivery.py``)."""
        if message.redelivered:
            self.metrics.redeliveries.labels("requests").inc()
        try:
            outcome = await self.accept(message)
        except InvalidRequest as exc:
            self.metrics.requests_received.labels("invalid").inc()
            error = await self.reject(message, exc)
            raise DeadLetter("invalid_request", error) from exc
        self.metrics.requests_received.labels(outcome).inc()

    def parse(self, message: AbstractIncomingMessage) -> tuple[Request, str]:
        self.check_reply_to(message.reply_to)
        if len(message.body) > self.settings.max_request_bytes:
            raise InvalidRequest(
                f"request is {len(message.body)} bytes, larger than the {self.settings.max_request_bytes}-byte cap",
                code="too_large",
            )
        try:
            data = json.loads(message.body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}", code="bad_json") from exc
        if not isinstance(data, dict):
            raise InvalidRequest("request body must be a JSON object", code="bad_json")
        try:
            request = Request.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc), code="invalid_request") from exc
        task_id = request.task_id or task_id_from_message_id(message.message_id) or new_task_id()
        return request, task_id

    def check_reply_to(self, reply_to: str | None) -> None:
        """``reply_to`` receives the terminal event: only queues a publisher may name (design: security)."""
        if not reply_to:
            return
        if reply_to.startswith(f"{self.broker.topology.prefix}."):
            raise InvalidRequest(
                f"reply_to: {reply_to!r} is one of imaged's own queues; name a queue of yours",
                code="bad_reply_to",
            )
        if not reply_to.startswith(tuple(self.settings.reply_to_prefixes)):
            allowed = ", ".join(repr(p) for p in self.settings.reply_to_prefixes) or "none"
            raise InvalidRequest(
                f"reply_to: {reply_to!r} is not a queue requests may name (allowed prefixes: {allowed}; "
                "see IMAGED_REPLY_TO_PREFIXES)",
                code="bad_reply_to",
            )

    async def accept(self, message: AbstractIncomingMessage) -> str:
        request, task_id = self.parse(message)
        submitted = await self.submit(
            request,
            task_id=task_id,
            owner=message.user_id,  # checked by RabbitMQ against the publishing connection's user
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
        )
        return "accepted" if submitted.created else "duplicate"

    # -- the requests of every entrance -------------------------------------------------------------------------

    def validate(self, request: Request) -> tuple[ModelSpec, dict[str, Any]]:
        """The model's spec and its normalised parameters; raises InvalidRequest naming the field."""
        spec = self.catalog.get(request.model)
        if spec is None:
            known = ", ".join(self.catalog.names())
            raise InvalidRequest(
                f"model: unknown model {request.model!r} (known: {known})", code="unknown_model"
            )
        if request.provider is not None and request.provider != spec.provider:
            raise InvalidRequest(
                f"provider: model {spec.name!r} is served by {spec.provider!r}, not {request.provider!r}",
                code="provider_mismatch",
            )
        provider = self.providers.get(spec.provider)
        if provider is None:
            raise InvalidRequest(
                f"provider: {spec.provider!r} is not configured on this daemon (no credentials)",
                code="provider_not_configured",
            )
        params = provider.validate(spec, request.parameters)
        try:
            check_plain_keys(params)
        except ValueError as exc:
            raise InvalidRequest(f"parameters: {exc}", code="invalid_request") from exc
        if request.webhook is not None and self.check_webhook is not None:
            try:
                self.check_webhook(request.webhook.url)
            except ValueError as exc:
                raise InvalidRequest(f"webhook.url: {exc}", code="bad_webhook_url") from None
        return spec, params

    async def submit(
        self,
        request: Request,
        *,
        task_id: str,
        owner: str | None,
        correlation_id: str | None,
        reply_to: str | None,
        fingerprint: str | None = None,
    ) -> Submitted:
        """Record the task (once per id), announce it and forward it to its lane.

        A task id of another owner raises :class:`TaskIdTaken` and touches nothing. The same request again
        (same owner) is forwarded again unless its task has finished, whose terminal event is sent once more.
        """
        spec, params = self.validate(request)
        now = utcnow()
        timeout_s = request.timeout_s or self.settings.task_timeout_s
        task = Task(
            id=task_id,
            status=Status.PENDING,
            model=spec.name,
            provider=spec.provider,
            created_at=now,
            updated_at=now,
            parameters=params,
            request_parameters=request.parameters,
            owner=owner,
            correlation_id=correlation_id,
            reply_to=reply_to,
            metadata=request.metadata,
            webhook=request.webhook.model_dump() if request.webhook else None,
            fingerprint=fingerprint,
            seq=1,  # the task.pending event below
            deadline=now + timedelta(seconds=timeout_s),
            history=[{"status": Status.PENDING.value, "at": now, "seq": 1}],
        )
        stored, created = await self.store.create(task)
        if not created and stored.owner != owner:
            raise TaskIdTaken(
                f"task_id: {task_id!r} is already in use by another owner; choose another one",
                code="task_id_taken",
            )
        if not created and stored.terminal:
            await self.events.republish(stored)
            return Submitted(stored, False)
        if created:
            await self.events.publish(stored, build_event(stored, Status.PENDING, progress=0.0))
        await self.forward(stored, created=created)
        log.info("accepted", extra={"task_id": task_id, "provider": spec.provider, "model": spec.name})
        return Submitted(stored, created)

    async def forward(self, task: Task, *, created: bool) -> None:
        """Publish the task's lane message, signed (see ``provenance.py``)."""
        # A new task travels with its lane message, so its job need not read it back.
        body = json.dumps(
            {"task_id": task.id, "task": task.to_message()} if created else {"task_id": task.id},
            ensure_ascii=False,
        ).encode()
        headers: dict[str, Any] = {SIGNATURE_HEADER: self.signer.sign(body)}
        if not created:
            headers[RESUME_HEADER] = 1  # recorded before: an earlier run may have started it somewhere
        await self.broker.publish_to_queue(
            self.broker.topology.work(task.provider),
            body,
            message_id=task.id,
            correlation_id=task.correlation_id,
            headers=headers,
        )

    # -- invalid requests -----------------------------------------------------------------------------------------

    async def reject(self, message: AbstractIncomingMessage, exc: InvalidRequest) -> dict[str, Any]:
        """Record and announce an invalid request where a task id is known; returns the error to dead-letter
        it with."""
        error = exc.info()
        log.info("invalid request: %s", exc.message, extra={"code": exc.code})
        task_id = self.known_task_id(message)
        if task_id is not None and not isinstance(exc, TaskIdTaken):
            await self.record_failure(message, task_id, error)
        return error.model_dump(mode="json")

    def known_task_id(self, message: AbstractIncomingMessage) -> str | None:
        data = json_object(message.body)
        if data is not None:
            candidate = data.get("task_id")
            if isinstance(candidate, str) and is_valid_task_id(candidate):
                return candidate
        return task_id_from_message_id(message.message_id)

    async def record_failure(self, message: AbstractIncomingMessage, task_id: str, error: ErrorInfo) -> None:
        """Store a failed task for a request that never became one, and announce it (once per task id)."""
        data = json_object(message.body) or {}
        model = clean_text(data["model"], 128) if isinstance(data.get("model"), str) else ""
        spec = self.catalog.get(model or "")
        provider = (
            spec.provider
            if spec
            else (clean_text(data["provider"], 64) if isinstance(data.get("provider"), str) else "")
        )
        try:
            self.check_reply_to(message.reply_to)
            reply_to = message.reply_to
        except InvalidRequest:
            reply_to = None  # never send anything to a queue the request may not name
        now = utcnow()
        task = Task(
            id=task_id,
            status=Status.FAILED,
            model=model[:128],
            provider=(provider or "")[:64],
            created_at=now,
            updated_at=now,
            owner=message.user_id,
            correlation_id=clean_text(message.correlation_id, 256) if message.correlation_id else None,
            reply_to=reply_to,
            seq=1,
            finished_at=now,
            progress=1.0,
            error=error.model_dump(mode="json"),
        )
        task.terminal_event = build_event(task, Status.FAILED, error=error)
        task.history = [{"status": Status.FAILED.value, "at": now}]
        stored, created = await self.store.create(task)
        if not created:
            # A task with this id exists already: a bad duplicate must not touch it. If it has finished, its
            # event may not have gone out yet (a crash before the publish): send it (again), to its owner only.
            if stored.terminal and stored.owner == message.user_id:
                await self.events.republish(stored)
            return
        await self.events.publish(stored, task.terminal_event)
        # Label values come from the catalog only: a bad request must not create new time series.
        self.metrics.tasks.labels(
            spec.provider if spec else "unknown", spec.name if spec else "unknown", "failed"
        ).inc()
