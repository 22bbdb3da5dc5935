"""Cancel, deadlines, expiry in the queue, progress events, and credential rotation, on the real services."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from imaged.broker import Broker, Topology
from imaged.daemon import Daemon
from imaged.settings import Settings
from imaged.simulator import Simulator

from ..conftest import make_daemon, make_settings
from ..support import AMQP_URL, Bus, seed_body

pytestmark = pytest.mark.timeout(60)


async def sim_stats(sim: Simulator) -> dict[str, dict[str, int]]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/_sim/stats") as resp:
        return dict((await resp.json())["providers"])


async def set_task_seconds(sim: Simulator, seconds: float) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.url}/_sim/config", json={"task_seconds": seconds}) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def wait_status(daemon: Daemon, task_id: str, status: str, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while True:
            task = await daemon.store.get(task_id)
            if task is not None and task.status == status:
                return
            await asyncio.sleep(0.05)


async def test_cancel_a_running_task(daemon: Daemon, bus: Bus, simulator: Simulator) -> None:
    await set_task_seconds(simulator, 30)
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
    await wait_status(daemon, task_id, "processing")
    await daemon.cancel(task_id)
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "canceled" and event["error"]["category"] == "canceled"
    stored = await daemon.store.get(task_id)
    assert stored is not None and stored.status == "canceled" and stored.provider_task_id


async def test_cancel_reaches_dashscope(daemon: Daemon, bus: Bus, simulator: Simulator) -> None:
    await set_task_seconds(simulator, 30)
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=task_id)
    await wait_status(daemon, task_id, "processing")
    await daemon.cancel(task_id)
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "canceled"
    assert (await sim_stats(simulator))["aliyun"]["cancels"] == 1


async def test_deadline_fails_with_timeout(daemon: Daemon, bus: Bus, simulator: Simulator) -> None:
    await set_task_seconds(simulator, 30)
    task_id = secrets.token_hex(12)
    body = json.loads(seed_body("star-3-alpha-t2i"))
    body["timeout_s"] = 1.5
    await bus.publish(json.dumps(body).encode(), message_id=task_id)
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "failed" and event["error"]["category"] == "timeout"


async def test_progress_events_follow_liblibai_percent(
    daemon: Daemon, bus: Bus, simulator: Simulator
) -> None:
    await set_task_seconds(simulator, 2.5)
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
    await bus.wait_terminal([task_id], within=30)
    events = bus.events[task_id]
    progress = [e["progress"] for e in events if e["type"] == "task.progress"]
    assert progress, [e["type"] for e in events]
    assert progress == sorted(progress) and all(0 < p < 1 for p in progress)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_request_expired_in_queue_is_never_submitted(
    settings: Settings, bus: Bus, simulator: Simulator
) -> None:
    broker = Broker(AMQP_URL, Topology.from_settings(settings))
    await broker.connect()
    assert broker.channel is not None
    await broker.declare(broker.channel, ["aliyun", "liblibai"])
    await broker.close()
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id, expiration=0.3)
    await asyncio.sleep(1.0)
    daemon = make_daemon(settings, simulator)
    await daemon.start()
    try:
        # The broker dead-lettered it; the daemon turns that into a failed task with its event.
        event = (await bus.wait_terminal([task_id], within=20))[task_id]
        stored = await daemon.store.get(task_id)
    finally:
        await daemon.stop()
    assert event["status"] == "failed"
    assert (event["error"]["category"], event["error"]["code"]) == ("timeout", "expired")
    assert stored is not None and stored.status == "failed"
    assert (await sim_stats(simulator))["liblibai"]["submits"] == 0


@pytest.fixture
async def rotating_daemon(
    namespace: str, tmp_path: Path, bus: Bus
) -> AsyncIterator[tuple[Daemon, Simulator]]:
    from imaged.simulator import SimulatorConfig

    sim = Simulator(SimulatorConfig(task_seconds=0.2, liblib_extra_keys={"sim-access-2": "sim-secret-2"}))
    await sim.start()
    settings = make_settings(namespace, tmp_path / "images", sim)
    daemon = make_daemon(
        settings,
        sim,
        liblibai_secret_key=SecretStr("wrong-secret"),  # the first key pair is broken
        liblibai_extra_keys=[SecretStr("sim-access-2:sim-secret-2")],
    )
    await daemon.start()
    yield daemon, sim
    await daemon.stop()
    await sim.stop()


async def test_failing_credential_leaves_rotation(
    rotating_daemon: tuple[Daemon, Simulator], bus: Bus
) -> None:
    daemon, sim = rotating_daemon
    ids = [secrets.token_hex(12) for _ in range(3)]
    for task_id in ids:
        await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
    terminal = await bus.wait_terminal(ids, within=30)
    assert {e["status"] for e in terminal.values()} == {"completed"}
    for task_id in ids:
        stored = await daemon.store.get(task_id)
        assert stored is not None and stored.credential == "liblibai-2"
    ready = await daemon.readiness()
    assert ready["credentials"]["liblibai"] == {"liblibai-1": "out of rotation", "liblibai-2": "active"}
    text = daemon.metrics.registry.get_sample_value(
        "imaged_credential_up", {"provider": "liblibai", "credential": "liblibai-1"}
    )
    assert text == 0
    stats = await sim_stats(sim)
    assert stats["liblibai"]["submits"] == 3


async def test_reply_to_into_imaged_queues_is_refused(daemon: Daemon, bus: Bus, simulator: Simulator) -> None:
    task_id = secrets.token_hex(12)
    lane_queue = f"{daemon.settings.amqp_prefix}.work.liblibai"
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id, reply_to=lane_queue)
    event = (await bus.wait_terminal([task_id], within=20))[task_id]
    assert event["status"] == "failed" and event["error"]["code"] == "bad_reply_to"
    assert "reply_to" in event["error"]["message"]
    await asyncio.sleep(1.0)  # a reply fed back into the lane would loop and repeat the event
    assert len(bus.terminal(task_id)) == 1
    assert (await sim_stats(simulator))["liblibai"]["submits"] == 0


@pytest.fixture
async def one_slot_daemon(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus
) -> AsyncIterator[Daemon]:
    settings = make_settings(namespace, tmp_path / "images", simulator)
    daemon = make_daemon(settings, simulator, aliyun_max_in_flight=1)
    await daemon.start()
    yield daemon
    await daemon.stop()


async def test_task_canceled_while_waiting_for_a_slot_is_never_submitted(
    one_slot_daemon: Daemon, bus: Bus, simulator: Simulator
) -> None:
    daemon = one_slot_daemon
    await set_task_seconds(simulator, 30)
    first, second = secrets.token_hex(12), secrets.token_hex(12)
    await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=first)
    await wait_status(daemon, first, "processing")
    await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=second)
    await asyncio.sleep(1.0)  # the second task now waits for the only slot
    await daemon.cancel(second)
    await daemon.cancel(first)  # frees the slot
    terminal = await bus.wait_terminal([first, second], within=30)
    assert terminal[second]["status"] == "canceled"
    assert (await sim_stats(simulator))["aliyun"]["submits"] == 1


async def test_retention_removes_old_finished_tasks(daemon: Daemon) -> None:
    from datetime import timedelta

    from imaged.contract import utcnow

    old = utcnow() - timedelta(days=40)
    await daemon.store.tasks.insert_many(
        [
            {"_id": "old-done", "status": "completed", "finished_at": old},
            {"_id": "old-running", "status": "processing", "finished_at": None},
            {"_id": "new-done", "status": "failed", "finished_at": utcnow()},
        ]
    )
    assert await daemon.store.purge_finished(before=utcnow() - timedelta(days=30)) == 1
    assert await daemon.store.get("old-done") is None
    assert (
        await daemon.store.get("old-running") is not None and await daemon.store.get("new-done") is not None
    )


@pytest.mark.parametrize("policy", ["resubmit", "fail"])
async def test_submit_unknown_policy(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus, policy: str
) -> None:
    # The provider creates the task but its reply is lost: imaged cannot know, and the policy decides.
    fault = {"provider": "liblibai", "stage": "submit", "kind": "reset", "phase": "after", "count": 1}
    async with aiohttp.ClientSession() as http, http.post(f"{simulator.url}/_sim/faults", json=fault) as resp:
        assert resp.status == 200, await resp.text()
    settings = make_settings(namespace, tmp_path / "images", simulator, submit_unknown_policy=policy)
    daemon = make_daemon(settings, simulator)
    await daemon.start()
    try:
        task_id = secrets.token_hex(12)
        await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id)
        event = (await bus.wait_terminal([task_id], within=30))[task_id]
        counted = daemon.metrics.registry.get_sample_value(
            "imaged_submit_unknown_total", {"provider": "liblibai", "policy": policy}
        )
    finally:
        await daemon.stop()
    assert counted == 1
    submits = (await sim_stats(simulator))["liblibai"]["submits"]
    if policy == "resubmit":
        assert event["status"] == "completed" and submits == 2  # paid twice, and counted
    else:
        assert event["status"] == "failed" and event["error"]["category"] == "submit_unknown" and submits == 1
