"""Reliability suite R1-R7 (quality.md): real faults, then count what was lost and what was duplicated.

Short variants run in `make test`; `--long` runs the long ones (hundreds of tasks, minutes). Every run ends in
:meth:`Reliability.tally`: nothing lost, no terminal event twice, no secret in a log or event, no partial file left.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from imaged.simulator import SimulatorConfig

from .harness import Reliability, dead_letter_count, mixed, publish_tasks, run_services, stored_statuses
from .malformed import bad_messages

pytestmark = pytest.mark.timeout(900)


async def test_r1_kill9_during_run(reliability: Reliability) -> None:
    run = reliability
    n, planned_kills = run.size(60, 300), run.size(4, 25)
    cluster, daemon = await run.fast_cluster(task_seconds=1.0)
    ids = await run.publish(n)
    kills = await run.kill_during_run(cluster, daemon, ids, planned_kills)
    await run.wait_all(cluster, ids, within=run.size(120, 600))
    assert await daemon.terminate() == 0
    result = await run.tally("R1", cluster, ids, kills=kills)
    # Each kill can land between a provider's reply and its write at most once.
    assert result.tasks <= result.submissions <= result.tasks + kills
    assert run.statuses(ids) == {"completed"}


@pytest.mark.parametrize(("name", "command"), [("R2", "restart-rabbitmq"), ("R3", "restart-mongo")])
async def test_r2_r3_service_restart_mid_run(reliability: Reliability, name: str, command: str) -> None:
    run = reliability
    cluster, daemon = await run.fast_cluster(task_seconds=2.0)
    ids = await run.publish(run.size(30, 200))
    await asyncio.sleep(1.5)
    await run_services(command)
    await run.wait_all(cluster, ids, within=run.size(180, 600))
    assert daemon.alive, f"the daemon exited during the {command}:\n{daemon.log_tail()}"
    assert await daemon.terminate() == 0
    result = await run.tally(name, cluster, ids)
    assert result.submissions == result.tasks
    assert run.statuses(ids) == {"completed"}


R4_FAULTS = [
    {"stage": "submit", "kind": "http_429", "rate": 0.1, "retry_after": 0.2},
    {"stage": "submit", "kind": "http_500", "rate": 0.1},
    {"stage": "poll", "kind": "http_500", "rate": 0.1},
    {"stage": "poll", "kind": "reset", "rate": 0.05},
    {"stage": "poll", "kind": "malformed_json", "rate": 0.05},
    {"stage": "poll", "kind": "timeout", "rate": 0.03, "seconds": 1},
    {"stage": "download", "kind": "truncated", "rate": 0.08},
    {"stage": "download", "kind": "http_500", "rate": 0.04},
    {"provider": "aliyun", "stage": "submit", "kind": "moderation", "rate": 0.08},
    {"provider": "liblibai", "stage": "poll", "kind": "moderation", "rate": 0.08},
    {"stage": "poll", "kind": "fail", "rate": 0.05},
    {"provider": "liblibai", "stage": "poll", "kind": "status7", "rate": 0.05},
]


async def test_r4_provider_faults(reliability: Reliability) -> None:
    run = reliability
    cluster, _ = await run.fast_cluster(task_seconds=0.3)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{cluster.simulator.url}/_sim/faults", json=R4_FAULTS) as resp:
            assert resp.status == 200, await resp.text()
        ids = await run.publish(run.size(60, 300))
        await run.wait_all(cluster, ids, within=run.size(240, 600))
        async with http.get(f"{cluster.simulator.url}/_sim/faults") as resp:
            fired = (await resp.json())["faults"]
    events = {t: run.bus.terminal(t)[0] for t in ids}
    categories: dict[str, int] = {}
    codes: set[str] = set()
    for event in events.values():
        key = event["status"] if event["status"] == "completed" else event["error"]["category"]
        categories[key] = categories.get(key, 0) + 1
        if event["error"]:
            codes.add(f"{event['error']['category']}/{event['error']['code']}")
        if event["status"] == "completed":
            assert event["result"]["images"], event
    hits = {
        kind: sum(f["hits"] for f in fired if f["kind"] == kind) for kind in ("moderation", "fail", "status7")
    }
    await run.tally("R4", cluster, ids, outcomes=categories, injected=hits, codes=sorted(codes))
    # Every outcome fault shows as its own category; every transient fault was retried away.
    assert categories.get("content_policy", 0) == hits["moderation"]
    assert categories.get("timeout", 0) == hits["status7"]
    assert categories.get("provider_error", 0) == hits["fail"]
    assert set(categories) <= {"completed", "content_policy", "timeout", "provider_error"}


async def test_r5_malformed_messages(reliability: Reliability) -> None:
    run = reliability
    n_bad, n_good = run.size(400, 3000), run.size(12, 100)
    cluster, daemon = await run.fast_cluster(task_seconds=0.2)
    bad = bad_messages(n_bad)
    good = mixed(n_good)
    known_ids: list[str] = []
    step = max(1, n_bad // n_good)
    batches = [bad[i : i + step] for i in range(0, n_bad, step)]
    for index, batch in enumerate(batches):
        for message in batch:
            await run.bus.publish(message.body, message_id=message.message_id)
            if message.message_id is not None:
                known_ids.append(message.message_id)
        if index < len(good):
            await publish_tasks(run.bus, [good[index]])
    good_ids = [task_id for task_id, _ in good]
    await run.wait_all(cluster, good_ids + known_ids, within=run.size(180, 900))
    async with asyncio.timeout(60):
        while True:
            dead = await dead_letter_count(cluster.namespace)
            if dead >= len(bad):
                break
            await asyncio.sleep(0.5)
    assert daemon.alive, daemon.log_tail()
    assert await daemon.terminate() == 0
    await run.tally("R5", cluster, good_ids, bad_sent=len(bad), dead_lettered=dead)
    assert dead == len(bad)
    assert run.statuses(good_ids) == {"completed"}
    for task_id in known_ids:
        event = run.bus.terminal(task_id)[0]
        assert event["status"] == "failed" and event["error"]["category"] == "invalid_request", event


async def test_r6_sigterm_hands_work_back(reliability: Reliability) -> None:
    run = reliability
    # Tasks outlast the grace period, so some work is handed back rather than finished.
    cluster, first = await run.fast_cluster(task_seconds=3.0, IMAGED_SHUTDOWN_GRACE_S="1")
    ids = await run.publish(run.size(20, 100))
    await asyncio.sleep(2.0)
    assert await first.terminate(within=30) == 0, first.log_tail()
    stored = await stored_statuses(cluster.namespace, ids)
    handed_back = sum(1 for status in stored.values() if status in ("pending", "processing"))
    await cluster.spawn()
    await run.wait_all(cluster, ids, within=run.size(120, 600))
    codes = await cluster.stop_all()
    result = await run.tally("R6", cluster, ids, handed_back=handed_back, exit_codes=codes)
    assert codes == [0, 0]
    assert handed_back > 0
    assert result.submissions == result.tasks  # handed-back tasks resumed polling, never resubmitted


async def test_r7_three_replicas_share_the_cap(reliability: Reliability) -> None:
    run = reliability
    # LiblibAI's real limits (5 tasks, 1 submit/s); tasks long enough that more than 5 would run if uncapped.
    cluster = await run.make_cluster(SimulatorConfig(task_seconds=8.0))
    for _ in range(3):
        await cluster.spawn()
    ids = await run.publish(run.size(15, 60), models=("star-3-alpha-t2i",))
    await run.wait_all(cluster, ids, within=run.size(180, 900))
    codes = await cluster.stop_all()
    stats = cluster.simulator.stats()["providers"]["liblibai"]
    result = await run.tally(
        "R7",
        cluster,
        ids,
        replicas=3,
        max_concurrent=stats["max_concurrent"],
        concurrency_limit_hits=stats["concurrency_limit_hits"],
        rate_limited=stats["rate_limited"],
    )
    assert codes == [0, 0, 0]
    assert stats["max_concurrent"] <= 5
    assert stats["concurrency_limit_hits"] == 0
    assert result.submissions == result.tasks
