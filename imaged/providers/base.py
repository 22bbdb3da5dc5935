"""The provider interface: what imaged needs from an image-generation API.

A provider validates a model's parameters, submits a task, polls it, and cancels it. Everything else (slots,
retries, downloads, events) is imaged's job, so a plugin stays small.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp
from pydantic import SecretStr

from ..catalog import ModelSpec
from ..contract import ErrorInfo
from ..errors import ProviderError
from ..settings import Settings


@dataclass(frozen=True)
class Credential:
    """One API key (pair) of a provider, with its own limits. ``name`` is safe to log; the secrets are not."""

    name: str
    key: SecretStr
    secret: SecretStr | None
    base_url: str
    max_in_flight: int


#: images a task may keep at most, whatever it asked for
MAX_IMAGES_PER_TASK = 16
DEFAULT_IMAGE_SIDE_MAX = 8192


class ProviderState(StrEnum):
    """A provider task's state, normalised across providers."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (ProviderState.SUCCEEDED, ProviderState.FAILED, ProviderState.CANCELED)


@dataclass
class ProviderImage:
    """An image the provider delivered, before imaged downloads it."""

    index: int
    url: str
    seed: int | None = None
    audit_status: int | None = None


@dataclass
class PollResult:
    """What one poll learned about a provider task."""

    state: ProviderState
    progress: float | None = None
    images: list[ProviderImage] = field(default_factory=list)
    failed_images: list[dict[str, Any]] = field(default_factory=list)
    error: ErrorInfo | None = None
    # Fields copied onto the result: pointsCost, accountBalance, usage, ...
    info: dict[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    """An image-generation API. Subclasses are registered by ``name`` (built in, or entry point
    ``imaged.providers``).

    Methods raise :class:`imaged.errors.ProviderError` (or a subclass of :class:`imaged.errors.TaskError`) with
    a category and ``retryable`` flag; imaged decides what to do with it.
    """

    name: ClassVar[str]
    #: seconds before the first poll; tasks rarely finish sooner
    first_poll_delay_s: ClassVar[float] = 2.0
    #: cap of the growing poll interval
    max_poll_interval_s: ClassVar[float] = 10.0

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    @abc.abstractmethod
    def credentials(self) -> list[Credential]:
        """The configured credentials; empty when the provider is not configured."""

    @abc.abstractmethod
    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise a request's parameters (defaults applied).

        Raises ``InvalidRequest`` naming the field.
        """

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        """Result fields known from the parameters alone (prompt, width, height); unknown ones are left out."""
        return {}

    def images_requested(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        """How many images the task asked for: imaged keeps (and bills) no more than that, whatever the reply
        lists. This default reads ``n`` or ``imgCount`` (at the top or inside ``generateParams``)."""
        for where in (params, params.get("generateParams")):
            if isinstance(where, dict):
                for key in ("n", "imgCount"):
                    value = where.get(key)
                    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                        return min(value, MAX_IMAGES_PER_TASK)
        return 1

    def image_side_max(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        """The largest width or height an image of this task may have: a provider that delivers more is broken
        or hostile (and a huge image costs memory and disk). From the catalog's ``output_side_max``, else four
        times its ``side_max`` (room for upscaling models), else 8192."""
        explicit = spec.limits.get("output_side_max")
        if isinstance(explicit, int) and explicit > 0:
            return explicit
        side_max = spec.limits.get("side_max")
        if isinstance(side_max, int) and side_max > 0:
            return 4 * side_max
        return DEFAULT_IMAGE_SIDE_MAX

    @abc.abstractmethod
    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        """Start a task at the provider and return its id."""

    @abc.abstractmethod
    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        """Ask the provider where the task is."""

    async def cancel(self, credential: Credential, spec: ModelSpec, provider_task_id: str) -> bool:
        """Cancel the task at the provider if it can; return whether it did."""
        return False


# --- HTTP helpers shared by provider clients ----------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    """A provider's HTTP answer: status, body parsed as JSON (``None`` when it was not JSON), Retry-After."""

    status: int
    body: Any
    is_json: bool
    retry_after: float | None = None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


_QUERY_RE = re.compile(r"\?[^\s'\"]*")


def _scrub(text: str) -> str:
    """Drop query strings (LiblibAI signs requests in the query) from an exception's text."""
    return _QUERY_RE.sub("?...", text)[:200]


#: the largest reply body a provider call reads; anything larger is refused while it is being read
MAX_REPLY_BYTES = 1024 * 1024


class ReplyTooLarge(Exception):
    """A reply body over ``MAX_REPLY_BYTES``."""


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    if response.content_length is not None and response.content_length > cap:
        raise ReplyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise ReplyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json_body: Any = None,
) -> HttpReply:
    """One HTTP call; transport failures become retryable ``ProviderError`` (``timeout``, ``connection_error``).

    ``what`` names the call in messages (e.g. ``"DashScope submit"``); neither headers nor the query ever appear
    in a message, so keys and signatures stay out of logs and task errors.
    """
    try:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            params=dict(params or {}),
            json=json_body,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await _read_capped(response, MAX_REPLY_BYTES)
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    except TimeoutError:
        raise ProviderError(
            f"{what}: no answer within {timeout_s:g} s", code="timeout", retryable=True
        ) from None
    except ReplyTooLarge:
        # Nothing a provider sends needs this much: a broken or hostile reply. For a submit it is ambiguous
        # (the task may exist), as any reply imaged cannot read.
        raise ProviderError(
            f"{what}: malformed response (reply larger than {MAX_REPLY_BYTES} bytes)",
            code="malformed_response",
            retryable=True,
        ) from None
    except aiohttp.ClientError as exc:
        raise ProviderError(
            f"{what}: connection failed ({type(exc).__name__}: {_scrub(str(exc))})",
            code="connection_error",
            retryable=True,
        ) from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return HttpReply(status=status, body=None, is_json=False, retry_after=retry_after)
    return HttpReply(status=status, body=body, is_json=True, retry_after=retry_after)
