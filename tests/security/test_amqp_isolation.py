"""Scenario 8: what a publisher on the queue cannot make the daemon do: reply into another service's queue, take
over another tenant's task id, or win a task id twice in a race."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from ..support import AMQP_URL, Bus, delete_broker_objects
from .conftest import StartDaemon
from .hostile import HostileDashScope, Script
from .support import (
    LOOPBACK,
    LeakLedger,
    as_tenant,
    daemon_secrets,
    http_call,
    request,
    request_bytes,
    tenant_keys,
    wait_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def publisher(robust: bool = False) -> AsyncIterator[AbstractChannel]:
    """Another service's connection to the broker (guest, no ``user_id``)."""
    if robust:
        connection: aio_pika.abc.AbstractConnection = await aio_pika.connect_robust(AMQP_URL, timeout=10)
    else:
        connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def send(channel: AbstractChannel, queue: str, body: bytes, **properties: Any) -> None:
    message = aio_pika.Message(body, content_type="application/json", **properties)
    await channel.default_exchange.publish(message, routing_key=queue)


async def drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


async def first_message(queue: AbstractQueue, within: float) -> AbstractIncomingMessage:
    async with asyncio.timeout(within):
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                return message
            await asyncio.sleep(0.05)


async def test_reply_to_may_name_only_exclusive_reply_queues(
    start_daemon: StartDaemon, bus: Bus, namespace: str, ledger: LeakLedger
) -> None:
    daemon = await start_daemon(download_allowed_networks=LOOPBACK)
    victim_name = f"othersvc.{namespace}.commands"  # another service's command queue
    try:
        async with publisher() as channel:
            victim = await channel.declare_queue(victim_name, durable=False, auto_delete=False)
            refused_id = secrets.token_hex(12)
            await send(
                channel, f"{namespace}.requests", request_bytes("to-victim", refused_id), reply_to=victim_name
            )
            event = (await bus.wait_terminal([refused_id], within=20))[refused_id]
            assert event["status"] == "failed"
            assert (event["error"]["category"], event["error"]["code"]) == ("invalid_request", "bad_reply_to")
            await asyncio.sleep(0.5)
            assert len(bus.terminal(refused_id)) == 1
            arrived = await drain(victim)
            assert arrived == []
            doc = await daemon.store.get(refused_id)
            assert doc is not None and doc.reply_to is None

            delivered: dict[str, str] = {}
            for robust in (False, True):
                async with publisher(robust) as own:
                    # amq.gen-* (server-named), or amq_* (named by aio-pika's robust channel)
                    mine = await own.declare_queue(exclusive=True)
                    task_id = secrets.token_hex(12)
                    await send(
                        own, f"{namespace}.requests", request_bytes("to-self", task_id), reply_to=mine.name
                    )
                    reply = json.loads((await first_message(mine, within=20)).body)
                    assert (reply["task_id"], reply["status"]) == (task_id, "completed"), reply
                    delivered["amq.gen-*" if mine.name.startswith("amq.gen-") else "amq_*"] = reply["type"]
            assert (
                ledger.check("8 reply_to", daemon_secrets(daemon), {"events": json.dumps(dict(bus.events))})
                == 0
            )
    finally:
        await delete_broker_objects([victim_name])
    print(
        f"reply_to {victim_name!r} -> refused bad_reply_to (one task.failed), messages in that queue: "
        f"{len(arrived)}; exclusive reply queues {sorted(delivered)} -> got {sorted(set(delivered.values()))}"
    )


async def dead_letter_of(bus: Bus, marker: str, within: float = 15.0) -> AbstractIncomingMessage:
    """The copy imaged put into ``<prefix>.dead`` of the message with ``message_id == marker``."""
    assert bus.channel is not None
    dead = await bus.channel.get_queue(f"{bus.prefix}.dead")
    found: list[AbstractIncomingMessage] = []

    async def arrived() -> bool:
        found.extend(m for m in await drain(dead) if m.message_id == marker)
        return bool(found)

    await wait_until(arrived, within, every=0.1)
    return found[0]


async def test_another_owners_task_id_is_refused_on_the_queue(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    http: aiohttp.ClientSession,
    namespace: str,
    ledger: LeakLedger,
) -> None:
    daemon = await start_daemon(api_keys=tenant_keys(), download_allowed_networks=LOOPBACK)
    assert daemon.http_url is not None
    gate = asyncio.Event()
    hostile.script("alice-task", Script(gate=gate))
    task_id = secrets.token_hex(12)
    created = await http_call(
        http,
        "POST",
        f"{daemon.http_url}/api/v1/tasks/",
        headers=as_tenant("alice"),
        json_body=request("alice-task", task_id),
    )
    assert created.status == 200, created.text
    await wait_status(daemon, task_id, {"processing"})
    before = await daemon.store.get(task_id)
    assert before is not None and before.owner == "alice"

    async with publisher() as channel:
        mine = await channel.declare_queue(exclusive=True)
        headers: list[dict[str, Any]] = []
        for attempt in ("running", "finished"):
            marker = f"hijack-{attempt}-{secrets.token_hex(4)}"
            body = request_bytes("hijack", task_id, metadata={"from": "mallory"})
            await send(
                channel,
                f"{namespace}.requests",
                body,
                reply_to=mine.name,
                message_id=marker,
                correlation_id=marker,
            )
            dead = await dead_letter_of(bus, marker)
            headers.append(dict(dead.headers or {}))
            if attempt == "running":
                during = await daemon.store.get(task_id)
                assert during is not None
                assert (
                    during.owner,
                    during.reply_to,
                    during.correlation_id,
                    during.metadata,
                    during.seq,
                ) == (
                    "alice",
                    None,
                    None,
                    {},
                    before.seq,
                )
                gate.set()
                await bus.wait_terminal([task_id], within=20)
        await asyncio.sleep(0.5)
        replies = await drain(mine)

    assert replies == []
    for header in headers:
        assert header.get("x-imaged-reason") == "invalid_request", header
        assert "task_id_taken" in str(header.get("x-imaged-error")), header
    kinds = [e["type"] for e in bus.events[task_id]]
    assert kinds.count("task.completed") == 1 and "task.failed" not in kinds, kinds
    after = await daemon.store.get(task_id)
    assert after is not None and (after.owner, after.reply_to, after.correlation_id) == ("alice", None, None)
    assert hostile.submits_of("hijack") == []
    assert (
        ledger.check("8 task id hijack", daemon_secrets(daemon), {"events": json.dumps(bus.events[task_id])})
        == 0
    )
    print(
        f"request naming alice's task id (running, then finished) with its own reply_to -> dead-lettered "
        f"{[h.get('x-imaged-reason') for h in headers]} / task_id_taken, replies received {len(replies)}, "
        f"task events {kinds}, owner/reply_to/correlation_id unchanged"
    )


async def test_two_tenants_racing_for_one_task_id_get_one_200_and_one_409(
    start_daemon: StartDaemon, bus: Bus, http: aiohttp.ClientSession, ledger: LeakLedger
) -> None:
    daemon = await start_daemon(api_keys=tenant_keys(), download_allowed_networks=LOOPBACK)
    assert daemon.http_url is not None
    url = f"{daemon.http_url}/api/v1/tasks/"
    rounds: list[tuple[int, int]] = []
    bodies: list[str] = []
    for number in range(5):
        task_id = secrets.token_hex(12)
        alice, bob = await asyncio.gather(
            http_call(
                http, "POST", url, headers=as_tenant("alice"), json_body=request(f"race-{number}", task_id)
            ),
            http_call(
                http, "POST", url, headers=as_tenant("bob"), json_body=request(f"race-{number}", task_id)
            ),
        )
        assert sorted((alice.status, bob.status)) == [200, 409], (alice.text, bob.text)
        winner, loser = ("alice", bob) if alice.status == 200 else ("bob", alice)
        assert loser.json()["success"] is False and "already in use" in loser.json()["message"]
        stored = await daemon.store.get(task_id)
        assert stored is not None and stored.owner == winner
        rounds.append((alice.status, bob.status))
        bodies += [alice.text, bob.text]
    assert ledger.check("8 race", daemon_secrets(daemon), {"HTTP bodies": "\n".join(bodies)}) == 0
    print(f"alice and bob POST the same new task_id at once, 5 rounds -> (alice, bob) statuses {rounds}")
