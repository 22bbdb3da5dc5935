"""Reliability suite R1-R7 (quality.md): real faults, then count what was lost and what was duplicated.

Short variants run in `make test`; `--long` runs the long ones (hundreds of tasks, minutes).
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from imaged.simulator import SimulatorConfig

from ..support import Bus, seed_body
from .conftest import Report, lifted_limits
from .harness import Cluster, dead_letter_count, publish_tasks, run_services, stored_statuses, tally
from .malformed import bad_messages

MakeCluster = Callable[..., Awaitable[Cluster]]

FAST = {
    "IMAGED_ALIYUN_SUBMIT_PER_SECOND": "50",
    "IMAGED_LIBLIBAI_SUBMIT_PER_SECOND": "50",
    "IMAGED_ALIYUN_MAX_IN_FLIGHT": "8",
    "IMAGED_LIBLIBAI_MAX_IN_FLIGHT": "8",
}


def mixed(
    n: int, models: tuple[str, ...] = ("wanx2.1-t2i-turbo", "star-3-alpha-t2i")
) -> list[tuple[str, bytes]]:
    return [(f"r{i:05d}-{secrets.token_hex(4)}", seed_body(models[i % len(models)])) for i in range(n)]


async def wait_all(bus: Bus, cluster: Cluster, ids: list[str], within: float) -> None:
    try:
        await bus.wait_terminal(ids, within=within)
    except TimeoutError:
        missing = [t for t in ids if not bus.terminal(t)]
        pytest.fail(f"{len(missing)} task(s) without a terminal event, e.g. {missing[:3]}\n{cluster.logs()}")
    await asyncio.sleep(1.0)  # let late duplicates arrive before counting


@pytest.mark.timeout(900)
async def test_r1_kill9_during_run(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool
) -> None:
    n, planned_kills = (300, 25) if long_run else (60, 4)
    cluster = await make_cluster(lifted_limits(1.0), **FAST)
    daemon = await cluster.spawn()
    ids = await publish_tasks(bus, mixed(n))
    kills = 0
    while kills < planned_kills and not all(bus.terminal(t) for t in ids):
        await asyncio.sleep(random.uniform(1.0, 3.0))
        await daemon.kill()
        kills += 1
        await cluster.restart(daemon)
    await wait_all(bus, cluster, ids, within=600 if long_run else 120)
    assert await daemon.terminate() == 0
    result = await tally("R1", cluster, bus, ids, kills=kills)
    report(result.line())
    assert (
        result.lost == 0
        and result.duplicate_terminal_ids == 0
        and result.secret_leaks == 0
        and result.leftover_partials == 0
    )
    # Each kill can land between a provider's reply and its write at most once.
    assert result.tasks <= result.submissions <= result.tasks + kills
    assert {e["status"] for t in ids for e in bus.terminal(t)} == {"completed"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("run", "command"), [("R2", "restart-rabbitmq"), ("R3", "restart-mongo")])
async def test_r2_r3_service_restart_mid_run(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool, run: str, command: str
) -> None:
    n = 200 if long_run else 30
    cluster = await make_cluster(lifted_limits(2.0), **FAST)
    daemon = await cluster.spawn()
    ids = await publish_tasks(bus, mixed(n))
    await asyncio.sleep(1.5)
    await run_services(command)
    await wait_all(bus, cluster, ids, within=600 if long_run else 180)
    assert daemon.alive, f"the daemon exited during the {command}:\n{daemon.log_tail()}"
    assert await daemon.terminate() == 0
    result = await tally(run, cluster, bus, ids)
    report(result.line())
    assert (
        result.lost == 0
        and result.duplicate_terminal_ids == 0
        and result.secret_leaks == 0
        and result.leftover_partials == 0
    )
    assert result.submissions == result.tasks
    assert {e["status"] for t in ids for e in bus.terminal(t)} == {"completed"}


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


@pytest.mark.timeout(900)
async def test_r4_provider_faults(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool
) -> None:
    n = 300 if long_run else 60
    cluster = await make_cluster(lifted_limits(0.3), **FAST)
    await cluster.spawn()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{cluster.simulator.url}/_sim/faults", json=R4_FAULTS) as resp:
            assert resp.status == 200, await resp.text()
        ids = await publish_tasks(bus, mixed(n))
        await wait_all(bus, cluster, ids, within=600 if long_run else 240)
        async with http.get(f"{cluster.simulator.url}/_sim/faults") as resp:
            fired = (await resp.json())["faults"]
    events = {t: bus.terminal(t)[0] for t in ids}
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
    result = await tally("R4", cluster, bus, ids, outcomes=categories, injected=hits, codes=sorted(codes))
    report(result.line())
    assert (
        result.lost == 0
        and result.duplicate_terminal_ids == 0
        and result.secret_leaks == 0
        and result.leftover_partials == 0
    )
    # Every outcome fault shows as its own category; every transient fault was retried away.
    assert categories.get("content_policy", 0) == hits["moderation"]
    assert categories.get("timeout", 0) == hits["status7"]
    assert categories.get("provider_error", 0) == hits["fail"]
    assert set(categories) <= {"completed", "content_policy", "timeout", "provider_error"}


@pytest.mark.timeout(900)
async def test_r5_malformed_messages(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool
) -> None:
    n_bad, n_good = (3000, 100) if long_run else (400, 12)
    cluster = await make_cluster(lifted_limits(0.2), **FAST)
    daemon = await cluster.spawn()
    bad = bad_messages(n_bad)
    good = mixed(n_good)
    known_ids: list[str] = []
    batches = [bad[i : i + max(1, n_bad // n_good)] for i in range(0, n_bad, max(1, n_bad // n_good))]
    for index, batch in enumerate(batches):
        for message in batch:
            await bus.publish(message.body, message_id=message.message_id)
            if message.message_id is not None:
                known_ids.append(message.message_id)
        if index < len(good):
            await publish_tasks(bus, [good[index]])
    good_ids = [task_id for task_id, _ in good]
    await wait_all(bus, cluster, good_ids + known_ids, within=900 if long_run else 180)
    async with asyncio.timeout(60):
        while True:
            dead = await dead_letter_count(cluster.namespace)
            if dead >= len(bad):
                break
            await asyncio.sleep(0.5)
    assert daemon.alive, daemon.log_tail()
    assert await daemon.terminate() == 0
    result = await tally("R5", cluster, bus, good_ids, bad_sent=len(bad), dead_lettered=dead)
    report(result.line())
    assert dead == len(bad)
    assert result.lost == 0 and result.duplicate_terminal_ids == 0 and result.secret_leaks == 0
    assert {bus.terminal(t)[0]["status"] for t in good_ids} == {"completed"}
    for task_id in known_ids:
        event = bus.terminal(task_id)[0]
        assert event["status"] == "failed" and event["error"]["category"] == "invalid_request", event


@pytest.mark.timeout(900)
async def test_r6_sigterm_hands_work_back(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool
) -> None:
    n = 100 if long_run else 20
    # Tasks outlast the grace period, so some work is handed back rather than finished.
    cluster = await make_cluster(lifted_limits(3.0), IMAGED_SHUTDOWN_GRACE_S="1", **FAST)
    first = await cluster.spawn()
    ids = await publish_tasks(bus, mixed(n))
    await asyncio.sleep(2.0)
    assert await first.terminate(within=30) == 0, first.log_tail()
    stored = await stored_statuses(cluster.namespace, ids)
    handed_back = sum(1 for status in stored.values() if status in ("pending", "processing"))
    await cluster.spawn()
    await wait_all(bus, cluster, ids, within=600 if long_run else 120)
    codes = await cluster.stop_all()
    result = await tally("R6", cluster, bus, ids, handed_back=handed_back, exit_codes=codes)
    report(result.line())
    assert codes == [0, 0]
    assert handed_back > 0
    assert (
        result.lost == 0
        and result.duplicate_terminal_ids == 0
        and result.secret_leaks == 0
        and result.leftover_partials == 0
    )
    assert result.submissions == result.tasks  # handed-back tasks resumed polling, never resubmitted


@pytest.mark.timeout(900)
async def test_r7_three_replicas_share_the_cap(
    make_cluster: MakeCluster, bus: Bus, report: Report, long_run: bool
) -> None:
    n = 60 if long_run else 15
    # LiblibAI's real limits (5 tasks, 1 submit/s); tasks long enough that more than 5 would run if uncapped.
    cluster = await make_cluster(SimulatorConfig(task_seconds=8.0))
    for _ in range(3):
        await cluster.spawn()
    ids = await publish_tasks(bus, mixed(n, models=("star-3-alpha-t2i",)))
    await wait_all(bus, cluster, ids, within=900 if long_run else 180)
    codes = await cluster.stop_all()
    stats = cluster.simulator.stats()["providers"]["liblibai"]
    result = await tally(
        "R7",
        cluster,
        bus,
        ids,
        replicas=3,
        max_concurrent=stats["max_concurrent"],
        concurrency_limit_hits=stats["concurrency_limit_hits"],
        rate_limited=stats["rate_limited"],
    )
    report(result.line())
    assert codes == [0, 0, 0]
    assert stats["max_concurrent"] <= 5
    assert stats["concurrency_limit_hits"] == 0
    assert result.submissions == result.tasks
    assert result.lost == 0 and result.duplicate_terminal_ids == 0 and result.secret_leaks == 0
