"""`imaged webhooks list` and `imaged webhooks replay` against a daemon delivering to a receiver on loopback."""

from __future__ import annotations

import logging
import secrets

import pytest

from imaged.cli.exits import EXIT_NOT_FOUND
from imaged.settings import Settings
from imaged.simulator import Simulator
from imaged.webhooks.attempts import AttemptLog

from ..conftest import make_daemon
from ..integration.test_webhooks import recorded, request_body, webhook_settings
from ..servers import WEBHOOK_SECRET, WebhookReceiver
from ..support import Bus
from .conftest import Cli

pytestmark = pytest.mark.timeout(120)


async def test_list_shows_every_attempt_and_replay_delivers_the_same_event_again(
    settings: Settings,
    simulator: Simulator,
    bus: Bus,
    cli: Cli,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    receiver.statuses = [503]
    daemon = make_daemon(settings, simulator, webhook_settings=webhook_settings())
    await daemon.start()
    try:
        task_id = secrets.token_hex(12)
        # Receivers put their tokens in paths and queries: neither is stored, logged or shown.
        url = f"{receiver.url}/receiver-path-token-123456?code=receiver-query-token-654321"
        await bus.publish(request_body(url), message_id=task_id)
        first = await receiver.wait_for(2, within=40)
        await recorded(AttemptLog(daemon.store.db, daemon.redactor), task_id, 2)

        listed = await cli("webhooks", "list", task_id, "--json")
        assert listed.code == 0, listed.err
        rows = listed.json()
        assert [(r["attempt"], r["outcome"], r["status"]) for r in rows] == [
            (1, "retry", 503),
            (2, "delivered", 200),
        ]
        assert rows[0]["event_id"] == first[0]["id"] and rows[0]["next_attempt_at"] is not None
        table = await cli("webhooks", "list", task_id)
        assert table.code == 0 and "delivered" in table.out and "retry" in table.out
        for run in (listed, table):
            assert (
                "receiver-token-123456" not in run.out + run.err and WEBHOOK_SECRET not in run.out + run.err
            )

        replay = await cli(
            "webhooks", "replay", task_id, env={"IMAGED_WEBHOOK_SECRET": WEBHOOK_SECRET}, stdin=b""
        )
        assert replay.code == 0, replay.err
        again = await receiver.wait_for(3, within=30)
    finally:
        await daemon.stop()
    assert again[2]["id"] == first[1]["id"] and again[2]["event"] == first[1]["event"]

    unknown = await cli("webhooks", "list", "no-such-task")
    assert unknown.code == EXIT_NOT_FOUND and "no task no-such-task" in unknown.err
    nothing = await cli("webhooks", "replay", "no-such-task")
    assert nothing.code == EXIT_NOT_FOUND
