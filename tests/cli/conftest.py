"""The command line runs as a subprocess (`python -m imaged ...`) with the test's namespace in its environment."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from imaged.settings import Settings

PROVIDER_ENV = (
    "ALIYUN_API_KEY",
    "LIBLIBAI_ACCESS_KEY",
    "LIBLIBAI_SECRET_KEY",
    "MONGODB_URL",
    "AMQP_URL",
    "RABBITMQ_URL",
)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a CLI process use these settings (the ones the tests vary)."""
    env = {
        "IMAGED_AMQP_URL": settings.amqp_url.get_secret_value(),
        "IMAGED_AMQP_PREFIX": settings.amqp_prefix,
        "IMAGED_MONGODB_URL": settings.mongodb_url.get_secret_value(),
        "IMAGED_MONGODB_DB": settings.mongodb_db,
        "IMAGED_IMAGE_DIR": str(settings.image_dir),
        "IMAGED_ALIYUN_BASE_URL": settings.aliyun_base_url,
        "IMAGED_LIBLIBAI_BASE_URL": settings.liblibai_base_url,
        "IMAGED_LOG_FORMAT": "json",
    }
    for name in ("aliyun_api_key", "liblibai_access_key", "liblibai_secret_key"):
        value = getattr(settings, name)
        if value is not None:
            env[f"IMAGED_{name.upper()}"] = value.get_secret_value()
    return env


class Cli(Protocol):
    async def __call__(
        self, *args: str, env: dict[str, str | None] | None = None, stdin: bytes = b""
    ) -> Run: ...


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Cli:
    """Run `imaged ARGS` with the test's settings; ``env`` overrides (None removes a variable)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_") and k not in PROVIDER_ENV}
    base.update(settings_env(settings))
    workdir = tmp_path / "cwd"  # no stray .env file is read
    workdir.mkdir(exist_ok=True)

    async def run(*args: str, env: dict[str, str | None] | None = None, stdin: bytes = b"") -> Run:
        full = dict(base)
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "imaged",
            *args,
            cwd=workdir,
            env=full,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    return run
