"""Signed, durable webhooks against real RabbitMQ and MongoDB: a receiver on loopback (allow-listed) checks every
delivery with the Standard Webhooks reference library, which imaged does not use itself."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiohttp
import pytest

from imaged.daemon import Daemon
from imaged.settings import Settings
from imaged.simulator import Simulator
from imaged.webhooks import WebhookSettings
from imaged.webhooks.attempts import AttemptLog

from ..conftest import make_daemon
from ..servers import WEBHOOK_SECRET, WebhookReceiver
from ..support import Bus, seed_body

pytestmark = pytest.mark.timeout(120)


def webhook_settings(**overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "secret": WEBHOOK_SECRET,
        "allowed_networks": ["127.0.0.0/8"],
        "first_retry_s": 0.3,  # waits of 0.3 s, 1.2 s, 4.8 s
        "timeout_s": 5,
    }
    values.update(overrides)
    return WebhookSettings.model_validate(values)


async def recorded(log: AttemptLog, task_id: str, count: int) -> list[dict[str, Any]]:
    """The task's attempts once ``count`` are recorded (an attempt is recorded right after its answer)."""
    async with asyncio.timeout(10):
        while True:  # polling the database: nothing here to wait on
            attempts = await log.for_task(task_id)
            if len(attempts) >= count:
                return attempts
            await asyncio.sleep(0.05)


def request_body(url: str, **webhook: Any) -> bytes:
    body = json.loads(seed_body("wanx2.1-t2i-turbo"))
    body["webhook"] = {"url": url, **webhook}
    return json.dumps(body).encode()


async def test_a_failing_receiver_gets_the_event_after_a_restart_with_the_same_webhook_id(
    settings: Settings, simulator: Simulator, bus: Bus, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500, 503, 502]
    daemon = make_daemon(settings, simulator, webhook_settings=webhook_settings())
    await daemon.start()
    task_id = secrets.token_hex(12)
    try:
        await bus.publish(request_body(receiver.url), message_id=task_id)
        terminal = (await bus.wait_terminal([task_id], within=30))[task_id]
        await receiver.wait_for(1, within=15)
    finally:
        await daemon.stop()  # the delivery waits in the broker meanwhile
    again = make_daemon(settings, simulator, webhook_settings=webhook_settings())
    await again.start()
    try:
        received = await receiver.wait_for(4, within=40)
        attempts = await recorded(AttemptLog(again.store.db, again.redactor), task_id, 4)
    finally:
        await again.stop()

    assert receiver.unverified == 0
    assert [r["answered"] for r in received] == [500, 503, 502, 200]
    assert {r["id"] for r in received} == {terminal["event_id"]}
    assert all(r["event"] == terminal for r in received)  # the event as published, byte for byte
    assert [(a["attempt"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "retry", 500),
        (2, "retry", 503),
        (3, "retry", 502),
        (4, "delivered", 200),
    ]
    assert all(a["latency_ms"] is not None and a["latency_ms"] >= 0 for a in attempts)


async def test_chosen_events_in_order_of_seq_and_a_tenant_default_url(
    settings: Settings, simulator: Simulator, bus: Bus, receiver: WebhookReceiver
) -> None:
    hooks = webhook_settings(tenant_urls={"guest": receiver.url})
    daemon = make_daemon(settings, simulator, webhook_settings=hooks)
    await daemon.start()
    try:
        chosen, default = secrets.token_hex(12), secrets.token_hex(12)
        await bus.publish(
            request_body(receiver.url, events=["pending", "processing", "completed"]), message_id=chosen
        )
        await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=default, user_id="guest")
        await bus.wait_terminal([chosen, default], within=30)
        received = await receiver.wait_for(4, within=15)
    finally:
        await daemon.stop()
    by_task: dict[str, list[str]] = {}
    for r in sorted(received, key=lambda r: r["event"]["seq"]):
        by_task.setdefault(r["event"]["task_id"], []).append(r["event"]["type"])
    assert by_task == {
        chosen: ["task.pending", "task.processing", "task.completed"],
        default: ["task.completed"],  # a tenant's default gets terminal events only
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),  # cloud metadata
        ("http://10.1.2.3/hook", "10.1.2.3"),  # private, not allow-listed
        ("http://user@127.0.0.1/hook", "user info"),
        ("ftp://127.0.0.1/hook", "http(s)"),
    ],
)
async def test_a_webhook_the_policy_refuses_fails_the_request_with_a_clear_error(
    settings: Settings, simulator: Simulator, bus: Bus, url: str, expected: str
) -> None:
    daemon = make_daemon(settings, simulator, webhook_settings=webhook_settings())
    await daemon.start()
    try:
        task_id = secrets.token_hex(12)
        await bus.publish(request_body(url), message_id=task_id)
        failed = (await bus.wait_terminal([task_id], within=15))[task_id]
    finally:
        await daemon.stop()
    assert failed["status"] == "failed" and failed["error"]["code"] in {"bad_webhook_url", "invalid_request"}
    assert "webhook.url" in failed["error"]["message"] and expected in failed["error"]["message"]


async def test_a_webhook_without_a_signing_secret_is_refused_over_http(
    settings: Settings, simulator: Simulator, bus: Bus
) -> None:
    daemon = make_daemon(settings, simulator)  # no IMAGED_WEBHOOK_SECRET
    await daemon.start()
    try:
        assert daemon.http_url is not None
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{daemon.http_url}/api/v1/tasks",
                data=request_body("https://hooks.example.com/imaged"),
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            answer = await resp.json()
    finally:
        await daemon.stop()
    assert resp.status == 422, answer
    assert "IMAGED_WEBHOOK_SECRET" in json.dumps(answer)


async def test_an_unsigned_message_on_the_webhook_queue_is_dropped_unsent(
    settings: Settings, simulator: Simulator, bus: Bus, receiver: WebhookReceiver
) -> None:
    # Anyone who may publish on the vhost reaches the queue; only imaged's signed messages make it send.
    daemon: Daemon = make_daemon(settings, simulator, webhook_settings=webhook_settings())
    await daemon.start()
    try:
        forged = {
            "delivery_id": "forged",
            "task_id": "t",
            "event_id": "t:1",
            "event": "completed",
            "url": receiver.url,
            "body": "{}",
        }
        await bus.publish(json.dumps(forged).encode(), queue=daemon.topology.webhooks)
        await bus.publish(request_body(receiver.url), message_id=secrets.token_hex(12))
        received = await receiver.wait_for(1, within=30)
        await asyncio.sleep(0.5)
    finally:
        await daemon.stop()
    assert [r["id"] for r in received] != ["t:1"] and len(received) == 1
