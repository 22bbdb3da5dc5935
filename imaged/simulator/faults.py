"""Faults injected at run time (`POST /_sim/faults`), so tests and chaos runs can make the providers misbehave.

A fault matches a provider ("aliyun", "liblibai" or "*"), a stage ("submit", "poll", "cancel", "download") and
fires either with a probability (`rate`) or for the next `count` matching requests (neither: every time).
Two families:

- transport faults act on the HTTP exchange of one request, before the provider logic runs (or, with
  `"phase": "after"`, after it ran and had its effects, e.g. a task created whose reply is lost):
  http_429, http_500, timeout, reset, malformed_json, slow (and truncated for downloads);
- outcome faults shape how a task ends and are drawn once per task, when it finishes: moderation, fail, partial,
  status7 (stage "poll"), and moderation of the input at stage "submit".

status7 is LiblibAI's timeout (generateStatus 7, points refunded; ComfyUI tasks, which know states 1..6 only, end in
6), DashScope's FAILED InternalError.Timeout. The setting `liblib_timeout_seconds` gives the same end to every
LiblibAI task that would run longer; `unreachable_inputs` makes submits naming such input URLs fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Provider = Literal["aliyun", "liblibai"]
Stage = Literal["submit", "poll", "cancel", "download"]
Kind = Literal[
    "http_429",
    "http_500",
    "timeout",
    "reset",
    "malformed_json",
    "slow",
    "truncated",
    "moderation",
    "fail",
    "partial",
    "status7",
]

TRANSPORT_KINDS: frozenset[str] = frozenset(
    {"http_429", "http_500", "timeout", "reset", "malformed_json", "slow"}
)
OUTCOME_KINDS: frozenset[str] = frozenset({"moderation", "fail", "partial", "status7"})
ALLOWED: dict[str, frozenset[str]] = {
    "submit": TRANSPORT_KINDS | {"moderation"},
    "poll": TRANSPORT_KINDS | OUTCOME_KINDS,
    "cancel": TRANSPORT_KINDS,
    "download": TRANSPORT_KINDS | {"truncated"},
}
DEFAULT_SECONDS = {"timeout": 30.0, "slow": 5.0}
_VARIANTS = frozenset(
    {
        ("moderation", "code"),
        ("moderation", "audit"),
        ("moderation", "audit_listed"),
        ("partial", "audit"),
        ("partial", "audit_listed"),
    }
)


class FaultSpec(BaseModel):
    """The JSON body of `POST /_sim/faults` (one object or a list of them)."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["aliyun", "liblibai", "*"] = "*"
    stage: Stage
    kind: Kind
    rate: float | None = Field(default=None, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1)
    retry_after: float | None = Field(default=None, ge=0.0)
    """Seconds sent in a Retry-After header with http_429."""
    seconds: float | None = Field(default=None, ge=0.0)
    """timeout: how long the request is held before the connection is dropped (default 30);
    slow: how long the answer (or the image body, in chunks) takes (default 5)."""
    phase: Literal["before", "after"] = "before"
    variant: Literal["code", "audit", "audit_listed"] | None = None
    """How LiblibAI shows blocked images (providers.md could not confirm one form). For moderation: "code"
    (default) answers envelope code 100055 with generateStatus 6; "audit" ends in generateStatus 5 with every
    image dropped from `images`; "audit_listed" ends in 5 with every image listed with auditStatus 4 and no
    imageUrl. For partial: "audit" (default) drops the blocked images, "audit_listed" lists them so."""

    @field_validator("provider", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return "aliyun" if value == "dashscope" else value

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        if self.rate is not None and self.count is not None:
            raise ValueError("give either rate or count, not both")
        if self.kind not in ALLOWED[self.stage]:
            allowed = ", ".join(sorted(ALLOWED[self.stage]))
            raise ValueError(
                f"kind {self.kind!r} does not apply to stage {self.stage!r} (allowed: {allowed})"
            )
        if self.variant is not None and (self.kind, self.variant) not in _VARIANTS:
            raise ValueError(f"variant {self.variant!r} does not apply to kind {self.kind!r}")
        if self.phase == "after" and (self.kind not in TRANSPORT_KINDS or self.stage == "download"):
            raise ValueError('phase "after" applies only to transport kinds at submit, poll or cancel')
        return self


@dataclass
class Fault:
    id: int
    spec: FaultSpec
    remaining: int | None
    hits: int = 0

    @property
    def seconds(self) -> float:
        if self.spec.seconds is not None:
            return self.spec.seconds
        return DEFAULT_SECONDS.get(self.spec.kind, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec.model_dump(), "remaining": self.remaining, "hits": self.hits}


class FaultPlan:
    """The active faults, matched in the order they were added."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, body: Any) -> list[Fault]:
        """Validate and add one spec or a list of specs (all or nothing); raises ValueError."""
        items = body if isinstance(body, list) else [body]
        try:
            specs = [FaultSpec.model_validate(item) for item in items]
        except ValidationError as exc:
            raise ValueError(_short(exc)) from None
        added = [Fault(next(self._ids), spec, spec.count) for spec in specs]
        self._faults.extend(added)
        return added

    def remove(self, fault_id: int) -> bool:
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fault_id]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]

    def draw(self, provider: Provider, stage: Stage, kinds: frozenset[str]) -> Fault | None:
        """The fault that fires for this request, if any; consumes one use of a counted fault."""
        for fault in self._faults:
            spec = fault.spec
            if spec.stage != stage or spec.kind not in kinds or spec.provider not in ("*", provider):
                continue
            if fault.remaining is not None:
                if fault.remaining <= 0:
                    continue
                fault.remaining -= 1
            elif self._rng.random() >= (1.0 if spec.rate is None else spec.rate):
                continue
            fault.hits += 1
            return fault
        return None


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts)


def abort_connection(request: web.Request) -> None:
    """Drop the client's connection with a TCP reset and no response, like a crashed proxy."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def hold(closing: asyncio.Event, seconds: float) -> None:
    """Wait `seconds` without blocking other requests; ends early when the emulator stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing.wait(), seconds)


MALFORMED_JSON = b'{"output": {"task_status": "SUCC'


def retry_after_header(seconds: float | None) -> dict[str, str] | None:
    """A Retry-After header in whole seconds (rounded up), or None."""
    return None if seconds is None else {"Retry-After": str(math.ceil(seconds))}
