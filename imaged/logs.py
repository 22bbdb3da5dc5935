"""Logging: configured once at the entry point; every line of a job carries its task id, provider and model."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from .redact import RedactingFilter, Redactor

_job_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "imaged_job_context", default=()
)

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def job_context(**fields: str) -> Iterator[None]:
    """Bind fields (task_id, provider, model) to every log line emitted inside the block."""
    token = _job_context.set((*_job_context.get(), *fields.items()))
    try:
        yield
    finally:
        _job_context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _job_context.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # the redacting filter leaves the (redacted) traceback here
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the job's fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def configure_logging(level: str = "INFO", fmt: str = "auto", redactor: Redactor | None = None) -> None:
    """Install one handler on the root logger, whose every line is redacted (``redact.py``). Called by the CLI
    only; :func:`use_redactor` swaps the secrets it knows later (e.g. once the emulator's keys are made)."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler.addFilter(RedactingFilter(redactor or Redactor()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries are chatty at INFO (every connection, every request).
    for noisy in ("aio_pika", "aiormq", "aiohttp.access", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def use_redactor(redactor: Redactor) -> None:
    """Redact log lines with these secrets from now on."""
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            if isinstance(found, RedactingFilter):
                found.redactor = redactor
