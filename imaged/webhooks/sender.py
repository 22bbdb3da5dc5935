"""One delivery attempt: the event POSTed, signed, to its URL, through the network guard.

The URL is checked before anything is sent (``netguard.check_url``) and the session's connector checks every
address it connects to, so a name that resolves to a refused address is refused too. A refusal is final: the
same URL is refused again. Redirects are not followed (a 3xx is a failed attempt). Only a 2xx delivers; any other
answer, a network error or a timeout is a failed attempt, to be retried.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from enum import StrEnum

import aiohttp

from .. import __version__
from ..contract import WEBHOOK_URL_MAX_CHARS
from ..netguard import AddressPolicy, RefusedURL, check_url, guarded_connector
from ..redact import Redactor
from .signing import signed_headers

USER_AGENT = f"imaged/{__version__}"
#: an error text is cut to this in the record
ERROR_MAX_CHARS = 300


class Result(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt gave: the answer's status, or an error (safe to store and show), and how long it took."""

    result: Result
    status: int | None = None
    error: str | None = None
    latency_ms: float | None = None


class Sender:
    """POSTs signed events. Open it with the event loop running; close it when done."""

    def __init__(
        self,
        policy: AddressPolicy,
        key: bytes | None,
        redactor: Redactor,
        *,
        timeout_s: float,
        max_response_bytes: int,
    ) -> None:
        self.policy = policy
        self._key = key
        self.redactor = redactor
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_response_bytes = max_response_bytes
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # trust_env stays off: a proxy would resolve names out of the guard's sight.
        self.session = aiohttp.ClientSession(connector=guarded_connector(self.policy))

    async def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    def _error(self, exc: BaseException) -> str:
        """What went wrong, in words that never carry the URL (aiohttp's texts may quote it whole)."""
        if isinstance(exc, TimeoutError):
            return f"TimeoutError: no answer within {self.timeout.total:g} s"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return f"{type(exc).__name__}: cannot connect to {exc.host}:{exc.port}"
        if isinstance(exc, OSError) and exc.strerror:
            return f"{type(exc).__name__}: {exc.strerror}"[:ERROR_MAX_CHARS]
        return type(exc).__name__

    async def send(self, url: str, msg_id: str, body: bytes) -> AttemptResult:
        """Make one attempt; never raises for anything the receiver or the network does."""
        if self._key is None:
            return AttemptResult(
                Result.REFUSED, error="IMAGED_WEBHOOK_SECRET is not set: nothing is sent unsigned"
            )
        if len(url) > WEBHOOK_URL_MAX_CHARS:
            return AttemptResult(
                Result.REFUSED, error=f"the URL is longer than {WEBHOOK_URL_MAX_CHARS} characters"
            )
        try:
            target = check_url(url, self.policy)
        except RefusedURL as exc:
            return AttemptResult(Result.REFUSED, error=self.redactor.text(exc.message)[:ERROR_MAX_CHARS])
        assert self.session is not None, "Sender.open() first"
        headers = {
            **signed_headers(self._key, msg_id, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        started = time.monotonic()
        try:
            async with self.session.post(
                target, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                latency_ms = round((time.monotonic() - started) * 1000, 1)
                # Read (and drop) a bounded part of the answer, so the connection can serve the next attempt;
                # the status decides, however the rest of the answer goes.
                if self.max_response_bytes:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        await resp.content.read(self.max_response_bytes)
                if 200 <= resp.status < 300:
                    return AttemptResult(Result.DELIVERED, status=resp.status, latency_ms=latency_ms)
                return AttemptResult(Result.FAILED, status=resp.status, latency_ms=latency_ms)
        except (
            RefusedURL
        ) as exc:  # the resolver's or the connector's check: the name resolves to a refused address
            return AttemptResult(Result.REFUSED, error=self.redactor.text(exc.message)[:ERROR_MAX_CHARS])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            return AttemptResult(Result.FAILED, error=self._error(exc), latency_ms=latency_ms)
