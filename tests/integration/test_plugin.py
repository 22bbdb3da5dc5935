"""A third provider added as a plugin (tests/plugin, written from the README's "Provider plugins" alone): an entry
point, its own settings (IMAGED_ECHO_*) and a catalog entry, no change to imaged's code.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imaged.catalog import SHIPPED_CATALOG
from imaged.daemon import Daemon
from imaged.providers import available_providers
from imaged.settings import Settings
from imaged.simulator import Simulator

from ..cli.conftest import PROVIDER_ENV, settings_env
from ..conftest import make_daemon, make_settings, sim_providers
from ..support import Bus

pytestmark = pytest.mark.timeout(60)

API_KEY = f"echo-secret-{secrets.token_hex(8)}"
ECHO_MODEL = """
[models."echo-1"]
provider = "echo"
kind = "text-to-image"
endpoint = "/"
price_per_image = 0.5
"""


@pytest.fixture
def echo_settings(
    namespace: str, tmp_path: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Core settings with the echo model in the catalog; the plugin's own settings are in the environment."""
    catalog = tmp_path / "models.toml"
    catalog.write_text(SHIPPED_CATALOG.read_text(encoding="utf-8") + ECHO_MODEL, encoding="utf-8")
    monkeypatch.setenv("IMAGED_ECHO_API_KEY", API_KEY)
    monkeypatch.setenv("IMAGED_ECHO_IMAGE_URL", f"{simulator.url}/_sim/images/aliyun_echo_0_320x240_c1.png")
    return make_settings(namespace, tmp_path / "images", simulator, catalog_path=catalog)


@pytest.fixture
async def echo_daemon(echo_settings: Settings, simulator: Simulator, bus: Bus) -> AsyncIterator[Daemon]:
    daemon = make_daemon(echo_settings, simulator)
    await daemon.start()
    yield daemon
    await daemon.stop()


async def run_task(bus: Bus, parameters: dict[str, Any]) -> dict[str, Any]:
    """Publish an echo-1 request; its terminal event."""
    task_id = secrets.token_hex(12)
    body = {"model": "echo-1", "provider": "echo", "parameters": parameters}
    await bus.publish(json.dumps(body).encode(), message_id=task_id)
    return (await bus.wait_terminal([task_id], within=30))[task_id]


def test_plugin_is_discovered_through_its_entry_point() -> None:
    providers = available_providers()
    assert {"aliyun", "liblibai", "echo"} <= set(providers)
    assert providers["echo"].__module__ == "imaged_echo_provider"


async def test_plugin_runs_tasks_without_leaking_its_key(
    echo_daemon: Daemon, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert "echo" in echo_daemon.providers
    event = await run_task(bus, {"prompt": "hello", "n": 2})
    assert event["status"] == "completed", event.get("error")
    assert event["provider"] == "echo"
    images = event["result"]["images"]
    assert [(image["width"], image["height"]) for image in images] == [(320, 240)] * 2
    assert all(Path(image["local_path"]).name.startswith("echo_") for image in images)
    assert event["result"]["usage"] == {"image_count": 2}
    assert event["result"]["cost"] == 1.0
    assert caplog.records, "the daemon logs through the logging module"
    assert API_KEY not in json.dumps(event)
    assert API_KEY not in caplog.text


async def test_invalid_parameters_fail_as_invalid_request(echo_daemon: Daemon, bus: Bus) -> None:
    event = await run_task(bus, {"prompt": ""})
    assert event["status"] == "failed"
    assert event["error"]["category"] == "invalid_request"
    assert "parameters.prompt" in event["error"]["message"]


async def test_without_a_key_the_provider_is_unavailable(
    echo_settings: Settings, simulator: Simulator, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGED_ECHO_API_KEY")
    daemon = make_daemon(echo_settings, simulator)
    await daemon.start()
    try:
        assert "echo" not in daemon.providers
        assert {"aliyun", "liblibai"} <= set(daemon.providers)
    finally:
        await daemon.stop()


def test_check_lists_the_plugin_settings_but_not_its_key(
    echo_settings: Settings, simulator: Simulator, tmp_path: Path
) -> None:
    """`imaged check` in a subprocess, with the test's IMAGED_* environment (the echo key and URL included)."""
    env = {  # the test's IMAGED_ECHO_* (set by echo_settings); no other setting from outside the test
        k: v
        for k, v in os.environ.items()
        if k.startswith("IMAGED_ECHO_") or not (k.startswith("IMAGED_") or k in PROVIDER_ENV)
    }
    env |= settings_env(echo_settings, sim_providers(simulator))
    env["IMAGED_CATALOG_PATH"] = str(echo_settings.catalog_path)
    run = subprocess.run(
        [sys.executable, "-m", "imaged", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    echo = output.split("echo: ", 1)[1].split(";", 1)[0]  # "providers  ...; echo: field=value, ...; ..."
    assert "api_key=set" in echo and f"image_url={simulator.url}/_sim/images/" in echo, echo
    assert API_KEY not in output
