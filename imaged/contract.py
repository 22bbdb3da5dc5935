"""The public message contract: requests, events, results and errors (design.md §2).

Everything here is public: publishers and subscribers depend on these shapes. Changing one is a breaking change.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .sanitize import has_lone_surrogate

TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)
METADATA_MAX_BYTES = 8 * 1024


class Status(StrEnum):
    """Task statuses, exactly these words."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELED)


class ErrorCategory(StrEnum):
    """Why a task failed; every provider code maps to exactly one."""

    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    QUOTA = "quota"
    RATE_LIMITED = "rate_limited"
    CONTENT_POLICY = "content_policy"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    DOWNLOAD_FAILED = "download_failed"
    SUBMIT_UNKNOWN = "submit_unknown"
    CANCELED = "canceled"
    INTERNAL = "internal"


def new_task_id() -> str:
    return secrets.token_hex(12)


def is_valid_task_id(value: str) -> bool:
    return bool(_TASK_ID_RE.match(value))


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_plain_keys(value: Any, depth: int = 0) -> None:
    """Keys stored in MongoDB must be plain names; nesting is bounded."""
    if depth > 8:
        raise ValueError("nested too deeply (at most 8 levels)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
                raise ValueError(f"key {key!r} is not a plain name (no '.', no leading '$')")
            check_plain_keys(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_plain_keys(item, depth + 1)


WebhookEvent = Literal["pending", "processing", "progress", "completed", "failed", "canceled"]

TERMINAL_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "canceled")
#: a webhook URL longer than this is refused
WEBHOOK_URL_MAX_CHARS = 2048


class Webhook(BaseModel):
    """Where a task's events are also POSTed, signed (Standard Webhooks): ``events`` names which."""

    model_config = ConfigDict(extra="forbid", title="ImagedWebhook")

    url: str = Field(max_length=WEBHOOK_URL_MAX_CHARS, description="http(s) URL of the receiver")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(TERMINAL_WEBHOOK_EVENTS),
        min_length=1,
        description="which events to deliver (by status; default: the terminal ones)",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


class Request(BaseModel):
    """An image-generation request as published to ``<prefix>.requests`` (or POSTed to the HTTP API)."""

    model_config = ConfigDict(extra="forbid", title="ImagedRequest")

    task_id: str | None = Field(
        None, pattern=TASK_ID_PATTERN, description="idempotency key; generated if absent"
    )
    model: str = Field(min_length=1, max_length=128, description="a model of the catalog")
    provider: str | None = Field(None, max_length=64, description="optional; must match the catalog")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the model's parameters")
    is_async: bool = Field(True, description="accepted for compatibility with the original service")
    metadata: dict[str, Any] = Field(default_factory=dict, description="small JSON object echoed in events")
    timeout_s: float | None = Field(
        None, gt=0, le=86400, description="deadline; defaults to the daemon's setting"
    )
    webhook: Webhook | None = Field(None, description="also POST the task's events here, signed")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # A lone UTF-16 surrogate ("\ud800" in JSON) cannot be stored or sent on: refuse it here, by name.
        if has_lone_surrogate(data):
            raise ValueError("contains invalid Unicode (a lone surrogate such as \\ud800)")
        return data

    @field_validator("metadata")
    @classmethod
    def _metadata_plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_plain_keys(value)
        if len(json.dumps(value, ensure_ascii=False).encode()) > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes")
        return value


class ErrorInfo(BaseModel):
    """Why a task failed."""

    category: ErrorCategory
    code: str
    message: str
    retryable: bool = False
    provider_status: int | None = None


class ImageInfo(BaseModel):
    """One delivered image: where the provider served it, where it is now, and what it is."""

    model_config = ConfigDict(extra="allow")

    index: int
    url: str = Field(description="where the provider served it (such links expire)")
    local_path: str | None = Field(None, description="the file, with local storage; null on S3")
    storage_url: str | None = Field(
        None, description="where imaged keeps it: file:///abs/path or s3://bucket/key"
    )
    download_url: str | None = Field(
        None,
        description="plain-HTTP link (presigned or public; fresh on every HTTP read); null for local files",
    )
    seed: int | None = None
    auditStatus: int | None = None
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str


class Result(BaseModel):
    """A completed task's result, in the original service's shape plus integrity fields."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the provider's task id")
    model: str
    created: str = Field(description="'YYYY-MM-DD HH:MM:SS', local time of completion")
    images: list[ImageInfo]
    prompt: str | None = None
    width: int | None = None
    height: int | None = None
    pointsCost: int | None = None
    accountBalance: int | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    failed_images: list[dict[str, Any]] = Field(
        default_factory=list, description="partial success: failed entries"
    )
    cost: float | None = Field(None, description="price of the delivered images, from the catalog")


EventType = Literal[
    "task.pending", "task.processing", "task.progress", "task.completed", "task.failed", "task.canceled"
]


class Event(BaseModel):
    """A task event on ``<prefix>.events`` with routing key ``task.<status>``."""

    event_id: str = Field(description="'<task_id>:<seq>'; a terminal event keeps its id when re-published")
    type: str
    seq: int
    occurred_at: datetime
    task_id: str
    status: Status
    model: str
    provider: str
    correlation_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    progress: float = 0.0
    result: Result | None = None
    error: ErrorInfo | None = None


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the public messages, for publishers and subscribers in other languages."""
    return {
        "request": Request.model_json_schema(),
        "event": Event.model_json_schema(),
        "result": Result.model_json_schema(),
        "error": ErrorInfo.model_json_schema(),
    }
