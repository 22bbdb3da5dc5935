"""Scenario 1: dead letters are believed only as far as imaged can check them.

Any AMQP client may publish a message with an ``x-death`` header into the dead-letter path (straight into
``<prefix>.dead.watch``, or through the fanout exchange ``<prefix>.dlx``). A forged one naming a tenant's task must
change nothing; a genuine one (a request that expired in the queue, a signed lane message) is still believed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aio_pika
import aiohttp
import pytest

from imaged.broker import Broker, Topology
from imaged.provenance import SIGNATURE_HEADER, LaneSigner

from ..support import AMQP_URL, Bus
from .conftest import StartDaemon
from .hostile import HostileDashScope, Script
from .support import (
    LOOPBACK,
    LeakLedger,
    as_tenant,
    daemon_secrets,
    http_call,
    metric,
    request,
    request_bytes,
    tenant_keys,
    wait_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

DEAD_LETTERS = "imaged_dead_letters_total"


def dead_letter(
    body: bytes, reason: str, queue: str, headers: dict[str, Any] | None = None
) -> aio_pika.Message:
    """A message shaped like one the broker dead-lettered: ``x-death`` names the reason and the queue."""
    death: dict[str, Any] = {
        "reason": reason,
        "queue": queue,
        "count": 1,
        "exchange": "",
        "routing-keys": [queue],
    }
    return aio_pika.Message(
        body,
        content_type="application/json",
        headers={"x-death": [death], **(headers or {})},
    )


async def send_dead_letter(bus: Bus, message: aio_pika.Message, route: str) -> None:
    """``route`` "watch": straight into ``<prefix>.dead.watch``; "dlx": through the fanout exchange."""
    assert bus.channel is not None
    if route == "watch":
        await bus.channel.default_exchange.publish(message, routing_key=f"{bus.prefix}.dead.watch")
    else:
        exchange = await bus.channel.get_exchange(f"{bus.prefix}.dlx", ensure=False)
        await exchange.publish(message, routing_key="")


def forged_body(queue: str, task_id: str) -> bytes:
    """What a dead letter of that queue would carry: a lane message or a request naming the task."""
    if ".work." in queue:
        return json.dumps({"task_id": task_id}).encode()
    return request_bytes("forged", task_id)


async def create_over_http(http: aiohttp.ClientSession, base: str, tenant: str, body: dict[str, Any]) -> None:
    reply = await http_call(http, "POST", f"{base}/api/v1/tasks/", headers=as_tenant(tenant), json_body=body)
    assert reply.status == 200, reply.text


def kinds(bus: Bus, task_id: str) -> list[str]:
    return [event["type"] for event in bus.events.get(task_id, [])]


async def test_forged_dead_letters_do_not_touch_a_tenants_tasks(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    ledger: LeakLedger,
) -> None:
    # One slot: alice's first task runs (held RUNNING by the provider), her second waits for the slot.
    daemon = await start_daemon(
        api_keys=tenant_keys(), aliyun_max_in_flight=1, download_allowed_networks=LOOPBACK
    )
    assert daemon.http_url is not None
    gate = asyncio.Event()
    hostile.script("forged-running", Script(gate=gate))
    running_id, queued_id = secrets.token_hex(12), secrets.token_hex(12)
    await create_over_http(http, daemon.http_url, "alice", request("forged-running", running_id))
    await wait_status(daemon, running_id, {"processing"})
    await create_over_http(http, daemon.http_url, "alice", request("forged-queued", queued_id))
    await asyncio.sleep(0.3)  # its lane message is taken; the job waits for the slot

    prefix = bus.prefix
    sent = 0
    for task_id in (running_id, queued_id):
        for reason in ("delivery_limit", "expired"):
            for queue in (f"{prefix}.work.aliyun", f"{prefix}.requests"):
                for route in ("watch", "dlx"):
                    await send_dead_letter(
                        bus, dead_letter(forged_body(queue, task_id), reason, queue), route
                    )
                    sent += 1

    async def all_dropped() -> bool:
        return metric(daemon, DEAD_LETTERS, reason="forged") >= sent

    await wait_until(all_dropped, within=15)
    assert metric(daemon, DEAD_LETTERS, reason="forged") == sent
    believed = {r: metric(daemon, DEAD_LETTERS, reason=r) for r in ("expired", "delivery_limit", "broker")}
    assert believed == {"expired": 0, "delivery_limit": 0, "broker": 0}
    running = await daemon.store.get(running_id)
    queued = await daemon.store.get(queued_id)
    assert running is not None and running.status.value == "processing"
    assert queued is not None and queued.status.value == "pending"

    gate.set()
    await bus.wait_terminal([running_id, queued_id], within=20)
    await asyncio.sleep(0.5)  # room for a stray second terminal event
    for task_id in (running_id, queued_id):
        assert kinds(bus, task_id).count("task.completed") == 1, kinds(bus, task_id)
        assert "task.failed" not in kinds(bus, task_id)
        stored = await daemon.store.get(task_id)
        assert stored is not None and stored.status.value == "completed" and stored.owner == "alice"
    leaks = ledger.check(
        "1 forged dead letters",
        daemon_secrets(daemon),
        {"events": json.dumps([bus.events[running_id], bus.events[queued_id]])},
    )
    assert leaks == 0
    print(
        f"forged dead letters: {sent} (delivery_limit/expired x work.aliyun/requests x dead.watch/dlx, "
        f"naming alice's running and queued task) -> forged counter +{sent:.0f}, believed 0, "
        "both tasks completed once, no task.failed"
    )


async def test_a_request_that_expired_in_the_queue_is_still_believed(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope, namespace: str
) -> None:
    broker = Broker(AMQP_URL, Topology(namespace))
    await broker.connect()
    assert broker.channel is not None
    await broker.declare(broker.channel, ["aliyun"])
    await broker.close()
    task_id = secrets.token_hex(12)
    await bus.publish(request_bytes("expired-for-real", task_id), message_id=task_id, expiration=0.3)
    await asyncio.sleep(1.0)  # the broker dead-letters it before any daemon runs

    daemon = await start_daemon()
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "failed"
    assert (event["error"]["category"], event["error"]["code"]) == ("timeout", "expired")
    assert metric(daemon, DEAD_LETTERS, reason="expired") == 1
    assert metric(daemon, DEAD_LETTERS, reason="forged") == 0
    assert hostile.submits_of("expired-for-real") == []
    print(
        "genuine dead letter: request expired in the queue -> believed: task failed timeout/expired, never submitted"
    )


async def test_a_signed_lane_dead_letter_is_believed_and_an_unsigned_copy_is_not(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
) -> None:
    daemon = await start_daemon(
        api_keys=tenant_keys(), aliyun_max_in_flight=1, download_allowed_networks=LOOPBACK
    )
    assert daemon.http_url is not None
    gate = asyncio.Event()
    hostile.script("signed-running", Script(gate=gate))
    running_id, queued_id = secrets.token_hex(12), secrets.token_hex(12)
    await create_over_http(http, daemon.http_url, "alice", request("signed-running", running_id))
    await wait_status(daemon, running_id, {"processing"})
    await create_over_http(http, daemon.http_url, "alice", request("signed-queued", queued_id))
    await asyncio.sleep(0.3)

    lane = f"{bus.prefix}.work.aliyun"
    body = json.dumps({"task_id": queued_id}).encode()
    signer = await LaneSigner.load(daemon.store.db["internal"])
    bad = {SIGNATURE_HEADER: "0" * 64}
    await send_dead_letter(bus, dead_letter(body, "delivery_limit", lane, bad), "watch")

    async def dropped() -> bool:
        return metric(daemon, DEAD_LETTERS, reason="forged") >= 1

    await wait_until(dropped, within=10)
    queued = await daemon.store.get(queued_id)
    assert queued is not None and queued.status.value == "pending"

    good = {SIGNATURE_HEADER: signer.sign(body)}  # as intake signs the lane messages it writes
    await send_dead_letter(bus, dead_letter(body, "delivery_limit", lane, good), "dlx")
    event = (await bus.wait_terminal([queued_id], within=15))[queued_id]
    assert (event["status"], event["error"]["code"]) == ("failed", "delivery_limit")
    assert metric(daemon, DEAD_LETTERS, reason="delivery_limit") == 1

    gate.set()
    completed = (await bus.wait_terminal([running_id], within=20))[running_id]
    assert completed["status"] == "completed"
    await asyncio.sleep(0.5)
    assert {e["event_id"] for e in bus.terminal(queued_id)} == {event["event_id"]}
    assert hostile.submits_of("signed-queued") == []
    print(
        "lane dead letter with a wrong signature -> forged, task untouched; with imaged's signature -> believed: "
        "task failed internal/delivery_limit, never submitted"
    )


async def test_a_forged_expired_request_does_not_fail_a_queued_task_of_the_same_owner(
    start_daemon: StartDaemon, bus: Bus, hostile: HostileDashScope
) -> None:
    """README: "a dead request may only create a failed task under an unused id". Publishers without
    ``user_id`` share one owner (``None``), so the owner check cannot tell this forger from the publisher;
    the task id, however, is in use: the dead letter must not fail the task."""
    daemon = await start_daemon(aliyun_max_in_flight=1, download_allowed_networks=LOOPBACK)
    gate = asyncio.Event()
    hostile.script("same-owner-running", Script(gate=gate))
    running_id, queued_id = secrets.token_hex(12), secrets.token_hex(12)
    await bus.publish(request_bytes("same-owner-running", running_id))
    await wait_status(daemon, running_id, {"processing"})
    await bus.publish(request_bytes("same-owner-queued", queued_id))
    await wait_status(daemon, queued_id, {"pending"})
    await asyncio.sleep(0.3)  # the job waits for the only slot: nobody holds the task's claim yet

    requests_queue = f"{bus.prefix}.requests"
    forged = dead_letter(request_bytes("forged", queued_id), "expired", requests_queue)
    await send_dead_letter(bus, forged, "watch")

    async def settled() -> bool:
        counted = sum(metric(daemon, DEAD_LETTERS, reason=r) for r in ("forged", "expired"))
        return counted >= 1

    await wait_until(settled, within=10)
    await asyncio.sleep(0.3)
    gate.set()
    await bus.wait_terminal([running_id, queued_id], within=20)
    outcome = bus.terminal(queued_id)[0]
    counters = {r: metric(daemon, DEAD_LETTERS, reason=r) for r in ("forged", "expired")}
    error = outcome.get("error") or {}
    print(
        f"forged 'expired' request dead letter naming a queued task of the same (absent) owner -> task "
        f"{outcome['status']} {error.get('category', '')}/{error.get('code', '')}, counters {counters}, "
        f"submits {len(hostile.submits_of('same-owner-queued'))}"
    )
    assert outcome["status"] == "completed", outcome.get("error")
