"""A third provider added as a plugin: an entry point plus a catalog entry, no change to imaged's code.

The plugin package lives in tests/plugin and is installed into the test environment by the Makefile.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imaged.catalog import SHIPPED_CATALOG
from imaged.daemon import Daemon
from imaged.metrics import Metrics
from imaged.providers import available_providers
from imaged.simulator import Simulator

from ..conftest import make_settings
from ..support import Bus

pytestmark = pytest.mark.timeout(60)

ECHO_MODEL = """
[models."echo-1"]
provider = "echo"
kind = "text-to-image"
endpoint = "/"
price_per_image = 0.5
"""


def test_plugin_is_discovered_through_its_entry_point() -> None:
    providers = available_providers()
    assert {"aliyun", "liblibai", "echo"} <= set(providers)
    assert providers["echo"].__module__ == "imaged_echo_provider"


@pytest.fixture
async def echo_daemon(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Daemon]:
    catalog = tmp_path / "models.toml"
    catalog.write_text(SHIPPED_CATALOG.read_text(encoding="utf-8") + ECHO_MODEL, encoding="utf-8")
    monkeypatch.setenv("IMAGED_ECHO_IMAGE_URL", f"{simulator.url}/_sim/images/aliyun_echo_0_320x240_c1.png")
    daemon = Daemon(
        make_settings(namespace, tmp_path / "images", simulator, catalog_path=catalog), metrics=Metrics()
    )
    await daemon.start()
    yield daemon
    await daemon.stop()


async def test_plugin_provider_runs_tasks(echo_daemon: Daemon, bus: Bus) -> None:
    assert "echo" in echo_daemon.providers
    task_id = secrets.token_hex(12)
    body = {"model": "echo-1", "provider": "echo", "parameters": {"prompt": "hello"}}
    await bus.publish(json.dumps(body).encode(), message_id=task_id)
    event = (await bus.wait_terminal([task_id], within=30))[task_id]
    assert event["status"] == "completed", event.get("error")
    image = event["result"]["images"][0]
    assert (image["width"], image["height"]) == (320, 240)
    assert Path(image["local_path"]).name.startswith("echo_")
    assert event["result"]["cost"] == 0.5
    assert event["provider"] == "echo"
