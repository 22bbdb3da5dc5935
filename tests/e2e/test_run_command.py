"""`imaged run --simulate-without-keys` (what `make run` starts) serves requests published by another process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from ..daemons import DaemonProcess
from ..support import AMQP_URL, MONGODB_URL, SEED_MODELS, Bus, seed_body

pytestmark = pytest.mark.timeout(120)


async def test_make_run_daemon_processes_published_requests(namespace: str, tmp_path: Path, bus: Bus) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_")}
    for original in ("ALIYUN_API_KEY", "LIBLIBAI_ACCESS_KEY", "LIBLIBAI_SECRET_KEY"):
        env.pop(original, None)
    env.update(
        {
            "IMAGED_AMQP_URL": AMQP_URL,
            "IMAGED_AMQP_PREFIX": namespace,
            "IMAGED_MONGODB_URL": MONGODB_URL,
            "IMAGED_MONGODB_DB": namespace,
            "IMAGED_IMAGE_DIR": str(tmp_path / "images"),
            "IMAGED_POLL_FIRST_DELAY_S": "0.5",
        }
    )
    daemon = DaemonProcess("make-run", env, tmp_path / "daemon.log", args=("--simulate-without-keys",))
    await daemon.start()
    try:
        await daemon.wait_ready(within=60)
        assert "SIMULATION MODE" in daemon.log_tail(200)
        ids = {}
        for model in SEED_MODELS:
            task_id = secrets.token_hex(12)
            ids[task_id] = model
            await bus.publish(seed_body(model), message_id=task_id)
        terminal = await bus.wait_terminal(ids, within=90)
        assert {e["status"] for e in terminal.values()} == {"completed"}, terminal
        assert await daemon.terminate() == 0
    finally:
        await daemon.kill()
