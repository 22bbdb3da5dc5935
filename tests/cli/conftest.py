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
from pydantic import SecretStr

from imaged.providers.base import ProviderSettings
from imaged.settings import Settings
from imaged.simulator import Simulator

from ..conftest import sim_providers

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


def settings_env(settings: Settings, providers: dict[str, ProviderSettings]) -> dict[str, str]:
    """The environment that makes a CLI process use these settings and providers (the ones the tests vary)."""
    env = {
        "IMAGED_AMQP_URL": settings.amqp_url.get_secret_value(),
        "IMAGED_AMQP_PREFIX": settings.amqp_prefix,
        "IMAGED_MONGODB_URL": settings.mongodb_url.get_secret_value(),
        "IMAGED_MONGODB_DB": settings.mongodb_db,
        "IMAGED_IMAGE_DIR": str(settings.image_dir),
        "IMAGED_LOG_FORMAT": "json",
    }
    for provider, values in providers.items():
        prefix = f"IMAGED_{provider.upper()}_"
        env[f"{prefix}BASE_URL"] = values.base_url
        for name in ("api_key", "access_key", "secret_key"):
            value = getattr(values, name, None)
            if isinstance(value, SecretStr):
                env[f"{prefix}{name.upper()}"] = value.get_secret_value()
    return env


class Cli(Protocol):
    async def __call__(
        self, *args: str, env: dict[str, str | None] | None = None, stdin: bytes = b""
    ) -> Run: ...


@pytest.fixture
def cli(settings: Settings, simulator: Simulator, tmp_path: Path) -> Cli:
    """Run `imaged ARGS` with the test's settings; ``env`` overrides (None removes a variable)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_") and k not in PROVIDER_ENV}
    base.update(settings_env(settings, sim_providers(simulator)))
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
