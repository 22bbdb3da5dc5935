"""Helpers of the security suite: settings for a daemon facing the hostile provider, log capture with the daemon's
redaction, secret-leak counting, and small waits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from imaged.auth import key_digest
from imaged.daemon import Daemon
from imaged.logs import JsonFormatter
from imaged.providers.aliyun import AliyunProvider, AliyunSettings
from imaged.providers.base import ProviderSettings
from imaged.providers.liblibai import LiblibProvider
from imaged.redact import RedactingFilter, Redactor
from imaged.settings import Settings

from ..support import AMQP_URL, MONGODB_URL

MODEL = "wanx2.1-t2i-turbo"
PRICE_PER_IMAGE = 0.14  # config/models.toml, wanx2.1-t2i-turbo
#: the DashScope key every daemon of the suite is configured with (the shape of the README's example)
DASHSCOPE_KEY = "sk-abcd1234efgh5678wxyz"
#: the same key as a gateway masks it when it echoes it
DASHSCOPE_KEY_MASKED = "sk-abcd1234***wxyz"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
#: a leak is the whole secret or any run of this many of its characters
SLICE = 10


def security_settings(namespace: str, image_dir: Path, **overrides: Any) -> Settings:
    """The core settings of a daemon in the test's namespace (provider settings: :func:`hostile_providers`)."""
    values: dict[str, Any] = {
        "amqp_url": SecretStr(AMQP_URL),
        "amqp_prefix": namespace,
        "mongodb_url": SecretStr(MONGODB_URL),
        "mongodb_db": namespace,
        "image_dir": image_dir,
        "http_port": 0,
        "poll_first_delay_s": 0.05,
        "poll_max_interval_s": 0.2,
        "shutdown_grace_s": 1.0,
        "create_rate_per_s": 0.0,
        "download_timeout_s": 5.0,
        **overrides,
    }
    return Settings.model_validate(values)


def hostile_providers(provider_url: str, **aliyun: Any) -> dict[str, ProviderSettings]:
    """Provider settings: DashScope is the hostile server (limits lifted, ``aliyun`` overrides its fields);
    LiblibAI has no key (not read from the environment either), so it stays off."""
    values: dict[str, Any] = {
        "api_key": SecretStr(DASHSCOPE_KEY),
        "base_url": provider_url,
        "max_in_flight": 64,
        "submit_per_second": 1000.0,
        "poll_per_second": None,
        **aliyun,
    }
    return {
        "aliyun": AliyunProvider.load_settings(**values),
        "liblibai": LiblibProvider.load_settings(access_key=None, secret_key=None),
    }


def subprocess_env(namespace: str, image_dir: Path, provider_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``imaged run`` subprocess equivalent to :func:`security_settings` and
    :func:`hostile_providers`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_")}
    env.update(
        {
            "IMAGED_AMQP_URL": AMQP_URL,
            "IMAGED_AMQP_PREFIX": namespace,
            "IMAGED_MONGODB_URL": MONGODB_URL,
            "IMAGED_MONGODB_DB": namespace,
            "IMAGED_IMAGE_DIR": str(image_dir),
            "IMAGED_ALIYUN_API_KEY": DASHSCOPE_KEY,
            "IMAGED_ALIYUN_BASE_URL": provider_url,
            "IMAGED_ALIYUN_MAX_IN_FLIGHT": "64",
            "IMAGED_ALIYUN_SUBMIT_PER_SECOND": "1000",
            "IMAGED_POLL_FIRST_DELAY_S": "0.05",
            "IMAGED_POLL_MAX_INTERVAL_S": "0.2",
            "IMAGED_SHUTDOWN_GRACE_S": "2",
            "IMAGED_LOG_FORMAT": "json",
            "IMAGED_LOG_LEVEL": "DEBUG",
        }
    )
    env.update(extra)
    return env


def request(prompt: str, task_id: str | None = None, *, n: int = 1, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "parameters": {"prompt": prompt, "n": n}, **fields}
    if task_id is not None:
        body["task_id"] = task_id
    return body


def request_bytes(prompt: str, task_id: str | None = None, *, n: int = 1, **fields: Any) -> bytes:
    return json.dumps(request(prompt, task_id, n=n, **fields)).encode()


# -- logs -------------------------------------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Log lines as the daemon's own root handler writes them: every record through a :class:`RedactingFilter`
    (with the daemon's redactor, see :meth:`use`), then :class:`JsonFormatter`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.redacting = RedactingFilter(Redactor())
        self.addFilter(self.redacting)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self._previous_level = logging.NOTSET

    def use(self, redactor: Redactor) -> None:
        self.redacting.redactor = redactor

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def matching(self, fragment: str) -> list[str]:
        return [line for line in self.lines if fragment in line]

    def install(self) -> None:
        root = logging.getLogger()
        self._previous_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self)

    def uninstall(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._previous_level)


def tracebacks(lines: Iterable[str]) -> list[str]:
    """JSON log lines that carry a traceback."""
    return [line for line in lines if "Traceback" in line or '"exception"' in line]


def crash_signs(lines: Iterable[str]) -> list[str]:
    """JSON log lines that show a crash: an error (a crashed job or consumer logs one) or a traceback."""
    return [
        line
        for line in lines
        if '"level": "error"' in line
        or '"level": "critical"' in line
        or "Traceback" in line
        or '"exception"' in line
    ]


# -- secrets ----------------------------------------------------------------------------------------------------------


def slices(secret: str, size: int = SLICE) -> set[str]:
    if len(secret) <= size:
        return {secret}
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leak_count(secret: str, text: str) -> int:
    """Places in ``text`` where the secret, or any ``SLICE`` consecutive characters of it, occur."""
    starts: set[int] = set()
    for piece in slices(secret):
        at = text.find(piece)
        while at >= 0:
            starts.add(at)
            at = text.find(piece, at + 1)
    return len(starts)


@dataclass
class LeakRow:
    check: int  # which call of LeakLedger.check
    scenario: str
    where: str
    secret: str
    chars: int
    leaks: int


@dataclass
class LeakLedger:
    """Every leak check of the session (scenario 9 sums them up)."""

    rows: list[LeakRow] = field(default_factory=list)

    def check(self, scenario: str, secrets: dict[str, str], texts: dict[str, str]) -> int:
        """Count the leaks of every secret in every text, record them, and return the total."""
        total = 0
        check = len({row.check for row in self.rows}) + 1
        for where, text in texts.items():
            for name, secret in secrets.items():
                found = leak_count(secret, text)
                self.rows.append(LeakRow(check, scenario, where, name, len(text), found))
                total += found
        return total

    @property
    def total(self) -> int:
        return sum(row.leaks for row in self.rows)


def daemon_secrets(daemon: Daemon, **more: str) -> dict[str, str]:
    """The secrets a daemon holds that a hostile peer could try to make it repeat."""
    s = daemon.settings
    aliyun = daemon.provider_settings["aliyun"]
    assert isinstance(aliyun, AliyunSettings)
    found = {"aliyun_api_key": aliyun.api_key.get_secret_value() if aliyun.api_key else ""}
    for number, key in enumerate(aliyun.extra_api_keys, start=2):
        found[f"aliyun_api_key_{number}"] = key.get_secret_value()
    if s.jwt_secret is not None:
        found["jwt_secret"] = s.jwt_secret.get_secret_value()
    if s.api_keys:
        found.update(alice_api_key=ALICE_KEY, bob_api_key=BOB_KEY)
    found.update(more)
    return {name: value for name, value in found.items() if value}


# -- waiting and reading ----------------------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.05) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(every)


async def wait_status(daemon: Daemon, task_id: str, wanted: set[str], within: float = 15.0) -> None:
    async def reached() -> bool:
        task = await daemon.store.get(task_id)
        return task is not None and task.status.value in wanted

    await wait_until(reached, within)


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


async def stored_doc(daemon: Daemon, task_id: str) -> dict[str, Any]:
    doc = await daemon.store.db["tasks"].find_one({"_id": task_id})
    assert doc is not None, f"task {task_id} is not stored"
    return dict(doc)


@dataclass
class Reply:
    status: int
    text: str

    def json(self) -> dict[str, Any]:
        body = json.loads(self.text)
        assert isinstance(body, dict)
        return body


async def http_call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    json_body: Any = None,
) -> Reply:
    async with http.request(method, url, headers=headers or {}, data=data, json=json_body) as resp:
        return Reply(resp.status, await resp.text())


# -- tenants ----------------------------------------------------------------------------------------------------------

#: API keys of two tenants (made per session: a leak check then finds real secrets, not fixed strings)
ALICE_KEY = "alice-" + secrets.token_hex(16)
BOB_KEY = "bob-" + secrets.token_hex(16)


def tenant_keys() -> dict[str, str | list[str]]:
    """The ``api_keys`` setting for alice and bob."""
    return {"alice": key_digest(ALICE_KEY), "bob": key_digest(BOB_KEY)}


def as_tenant(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ALICE_KEY if name == 'alice' else BOB_KEY}"}
