"""What went wrong reaching a backing service, in one line an operator can act on, and never with a secret.

Used where imaged starts (a wrong AMQP password or MongoDB URL ends in one line, not a traceback) and by
``imaged check``.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import parse_qsl, urlencode

import aio_pika
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError, ServerSelectionTimeoutError

from .errors import ImagedError

_SECRET_QUERY = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)

#: what connecting to the broker may raise
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    aio_pika.exceptions.AMQPError,
    ValueError,
)
#: what connecting to the database may raise (a malformed URL is a ValueError or ConfigurationError)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (PyMongoError, ValueError, TypeError)


class StartupError(ImagedError):
    """A backing service could not be used at start; the message is safe to print."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


def mask_url(url: str) -> str:
    """A URL safe to print: the password (and secret-looking query values) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    path, qmark, query = tail.partition("?")
    if qmark:
        pairs = [
            (k, "***" if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    return f"{scheme}://{netloc}{slash}{path}{qmark}{query}"


def broker_reason(exc: BaseException) -> str:
    """Why the broker could not be used."""
    if isinstance(exc, aio_pika.exceptions.ProbableAuthenticationError):
        return "the broker refused the user name or password"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is RabbitMQ running there?)"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ValueError):
        return "not a usable AMQP URL"
    return type(exc).__name__


def database_reason(exc: BaseException, timeout_s: float) -> str:
    """Why the database could not be used."""
    detail = str(exc).partition(" (configured timeouts")[0].partition(", Timeout:")[0][:200]
    if isinstance(exc, ValueError | TypeError | ConfigurationError):
        return f"not a usable MongoDB URL ({type(exc).__name__})"
    if isinstance(exc, ServerSelectionTimeoutError):
        return f"no server answered within {timeout_s:g}s ({detail})"
    if isinstance(exc, OperationFailure) and exc.code in (13, 18):
        return "the server refused the user name or password"
    return f"{type(exc).__name__}: {detail}"
