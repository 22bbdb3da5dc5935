"""A task as imaged keeps it: the typed form of one document of the ``tasks`` collection (design.md §3).

Jobs, intake and the HTTP API work with :class:`Task`; only the store turns it into a MongoDB document and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .contract import Status, utcnow

#: sequence numbers a resumed run skips, so that progress events of an interrupted run (numbered in memory,
#: never stored) cannot share an ``event_id`` with later events; a run sends at most this many minus two
RESUME_SEQ_GAP = 100


@dataclass
class Task:
    """One image-generation task and everything imaged has learned about it."""

    id: str
    status: Status
    model: str
    provider: str
    created_at: datetime
    updated_at: datetime
    parameters: dict[str, Any] = field(default_factory=dict)
    request_parameters: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: where its events are also POSTed (``contract.Webhook`` as a dict), if the request named one
    webhook: dict[str, Any] | None = None
    #: sha256 of the HTTP request that created it (tenant and body): an Idempotency-Key reused with another body
    #: is refused, and an SDK's retry of the same body finds its task
    fingerprint: str | None = None
    provider_task_id: str | None = None
    credential: str | None = None
    attempts: int = 0
    #: the sequence number of the latest event sent (or, for progress events, the latest stored one)
    seq: int = 0
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    terminal_event: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: fields of a stored document this version does not know, kept so that a write never drops them
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def to_doc(self) -> dict[str, Any]:
        """The MongoDB document (``_id`` = task id)."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            {
                "_id": self.id,
                "status": self.status.value,
                "model": self.model,
                "provider": self.provider,
                "parameters": self.parameters,
                "request_parameters": self.request_parameters,
                "owner": self.owner,
                "correlation_id": self.correlation_id,
                "reply_to": self.reply_to,
                "metadata": self.metadata,
                "webhook": self.webhook,
                "fingerprint": self.fingerprint,
                "provider_task_id": self.provider_task_id,
                "credential": self.credential,
                "attempts": self.attempts,
                "seq": self.seq,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "submitted_at": self.submitted_at,
                "finished_at": self.finished_at,
                "deadline": self.deadline,
                "progress": self.progress,
                "result": self.result,
                "error": self.error,
                "cancel_requested": self.cancel_requested,
                "terminal_event": self.terminal_event,
                "history": self.history,
            }
        )
        return doc

    def to_message(self) -> dict[str, Any]:
        """What a job needs to start a new task without reading the database: for the lane message."""
        return {
            "id": self.id,
            "model": self.model,
            "provider": self.provider,
            "parameters": self.parameters,
            "owner": self.owner,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "metadata": self.metadata,
            "webhook": self.webhook,
            "seq": self.seq,
            "created_at": self.created_at.isoformat(),
            "deadline": self.deadline.isoformat() if self.deadline else None,
        }

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Task:
        """The task intake stored, from its lane message (``ValueError``/``KeyError``/``TypeError`` if malformed)."""
        created = datetime.fromisoformat(data["created_at"])
        deadline = data.get("deadline")
        return cls(
            id=str(data["id"]),
            status=Status.PENDING,
            model=str(data["model"]),
            provider=str(data["provider"]),
            created_at=created,
            updated_at=created,
            parameters=dict(data["parameters"]),
            owner=data.get("owner"),
            correlation_id=data.get("correlation_id"),
            reply_to=data.get("reply_to"),
            metadata=dict(data.get("metadata") or {}),
            webhook=data.get("webhook"),
            seq=int(data["seq"]),
            deadline=datetime.fromisoformat(deadline) if deadline else None,
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Task:
        """A task from its stored document; tolerant of documents written by earlier versions."""
        known = _FIELDS | {"_id"}
        created = doc.get("created_at") or doc.get("updated_at") or utcnow()
        return cls(
            id=str(doc["_id"]),
            status=Status(doc.get("status", Status.PENDING.value)),
            model=str(doc.get("model") or ""),
            provider=str(doc.get("provider") or ""),
            created_at=created,
            updated_at=doc.get("updated_at") or created,
            parameters=doc.get("parameters") or {},
            request_parameters=doc.get("request_parameters") or {},
            owner=doc.get("owner"),
            correlation_id=doc.get("correlation_id"),
            reply_to=doc.get("reply_to"),
            metadata=doc.get("metadata") or {},
            webhook=doc.get("webhook"),
            fingerprint=doc.get("fingerprint"),
            provider_task_id=doc.get("provider_task_id"),
            credential=doc.get("credential"),
            attempts=int(doc.get("attempts") or 0),
            seq=int(doc.get("seq") or 0),
            submitted_at=doc.get("submitted_at"),
            finished_at=doc.get("finished_at"),
            deadline=doc.get("deadline"),
            progress=float(doc.get("progress") or 0.0),
            result=doc.get("result"),
            error=doc.get("error"),
            cancel_requested=bool(doc.get("cancel_requested")),
            terminal_event=doc.get("terminal_event"),
            history=list(doc.get("history") or []),
            extra={k: v for k, v in doc.items() if k not in known},
        )


_FIELDS = frozenset(name for name in Task.__dataclass_fields__ if name not in ("id", "extra"))
