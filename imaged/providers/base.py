"""The provider interface: what imaged needs from an image-generation API.

A provider validates a model's parameters, submits a task, polls it, and cancels it. Everything else (slots,
retries, downloads, events) is imaged's job, so a plugin stays small.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..catalog import ModelSpec
from ..contract import ErrorInfo
from ..errors import ConfigError, ProviderError
from ..settings import describe_settings_error


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
IMAGE_SIDE_CEILING = 16384


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


def provider_config(env_prefix: str) -> SettingsConfigDict:
    """The settings configuration of a provider: its environment prefix and the .env file of imaged."""
    return SettingsConfigDict(
        env_prefix=env_prefix,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )


class ProviderSettings(BaseSettings):
    """The settings every provider has; a provider subclasses it with its own prefix and credentials.

    Read from environment variables with the provider's prefix (``IMAGED_<NAME>_``), the ``.env`` file, and
    defaults; checked when the daemon starts and listed (without secrets) by ``imaged check``. Credentials are
    ``SecretStr`` fields: they never appear in logs, errors or output.
    """

    model_config = provider_config("IMAGED_PROVIDER_")

    base_url: str = Field("", description="the API's base URL")
    max_in_flight: int = Field(1, ge=1, description="tasks in flight per credential, across all replicas")
    submit_per_second: float = Field(1.0, gt=0, description="submits per second per credential")
    poll_per_second: float | None = Field(
        None, gt=0, description="status queries per second per credential (none: unlimited)"
    )

    def public(self) -> dict[str, Any]:
        """The settings without secrets (for ``imaged check`` and logs): secrets show whether they are set."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) or (
                isinstance(value, list) and value and isinstance(value[0], SecretStr)
            ):
                shown[name] = f"{len(value)} set" if isinstance(value, list) else "set"
            elif value is None or value == []:
                continue
            else:
                shown[name] = value
        return shown


class Provider(abc.ABC):
    """An image-generation API. Subclasses are registered by ``name`` (built in, or entry point
    ``imaged.providers``).

    Methods raise :class:`imaged.errors.ProviderError` (or a subclass of :class:`imaged.errors.TaskError`) with
    a category and ``retryable`` flag; imaged decides what to do with it.
    """

    name: ClassVar[str]
    #: the provider's settings (its own environment prefix); see :class:`ProviderSettings`
    settings_model: ClassVar[type[ProviderSettings]] = ProviderSettings
    #: seconds before the first poll; tasks rarely finish sooner
    first_poll_delay_s: ClassVar[float] = 2.0
    #: cap of the growing poll interval
    max_poll_interval_s: ClassVar[float] = 10.0

    def __init__(self, settings: ProviderSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session

    @classmethod
    def load_settings(cls, **values: Any) -> ProviderSettings:
        """The provider's settings from the environment (``values`` win); ConfigError naming what is wrong."""
        try:
            return cls.settings_model(**values)
        except ValidationError as exc:
            prefix = str(cls.settings_model.model_config.get("env_prefix", ""))
            raise ConfigError(f"provider {cls.name}: {describe_settings_error(exc, prefix)}") from None

    @abc.abstractmethod
    def credentials(self) -> list[Credential]:
        """The configured credentials; empty when the provider is not configured."""

    @classmethod
    def check_model(cls, spec: ModelSpec) -> None:
        """Check a catalog entry of this provider (its ``options`` above all) when the daemon starts; raise
        ConfigError naming the model and what is wrong. The default accepts an entry without options."""
        if spec.options:
            raise ConfigError(
                f"model {spec.name!r}: provider {cls.name} takes no options (got {sorted(spec.options)})"
            )

    @classmethod
    def openai_parameters(
        cls,
        spec: ModelSpec,
        *,
        prompt: str,
        n: int | None,
        size: tuple[int, int] | str | None,
        images: Sequence[str] = (),
        mask: str | None = None,
    ) -> dict[str, Any]:
        """A request of the OpenAI images API (``prompt``, ``n``, ``size`` as (width, height) or a size tier name,
        input ``images`` and a ``mask`` as URLs) as this provider's parameters; the caller adds the provider's own
        extras. This default speaks DashScope's names: ``prompt``, ``n``, ``size`` as ``"W*H"``, ``images``, and
        for the image editor ``base_image_url`` and ``mask_image_url``."""
        params: dict[str, Any] = {"prompt": prompt}
        if n is not None:
            params["n"] = n
        if size is not None and spec.kind != "image-edit":  # an edit keeps its input's size
            params["size"] = size if isinstance(size, str) else f"{size[0]}*{size[1]}"
        if images and spec.kind == "image-edit":
            params["base_image_url"] = images[0]
            if mask is not None:
                params["mask_image_url"] = mask
        elif images:
            params["images"] = list(images)
        return params

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
        or hostile (and a huge image costs memory and disk). Four times the longest side the catalog's size rule
        allows (room for upscaling models), at most 16384; 8192 for a model without a size rule."""
        rule = spec.accepts.size
        largest = rule.largest_side() if rule is not None else 0
        return min(4 * largest, IMAGE_SIDE_CEILING) if largest else DEFAULT_IMAGE_SIDE_MAX

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


def malformed(what: str, detail: str, status: int | None = None) -> ProviderError:
    """A reply imaged cannot read (retryable: for a submit it is ambiguous, the task may exist)."""
    return ProviderError(
        f"{what}: malformed response ({detail})",
        code="malformed_response",
        retryable=True,
        provider_status=status,
    )


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
        raise malformed(what, f"reply larger than {MAX_REPLY_BYTES} bytes") from None
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
