"""The reliability harness: imaged as real subprocesses, the emulator, the bus, and the tally of what was lost.

Faults are real: SIGKILL and SIGTERM to the daemon, restarts of the broker and the database through
``deploy/local/services.sh``, and the emulator's fault injection. :class:`Reliability` is what every run shares:
a cluster on an emulator, tasks published, all of them awaited, and the tally that must show nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from imaged.simulator import Simulator, SimulatorConfig
from imaged.storage.local import leftover_parts

from ..daemons import DaemonProcess
from ..support import AMQP_URL, MONGODB_URL, Bus, seed_body

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "deploy" / "local" / "services.sh"


@dataclass
class Cluster:
    """Daemon replicas on one namespace, pointed at an in-test emulator."""

    namespace: str
    workdir: Path
    simulator: Simulator
    config: SimulatorConfig
    extra_env: dict[str, str] = field(default_factory=dict)
    daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def image_dir(self) -> Path:
        return self.workdir / "images"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGED_")}
        env.update(
            {
                "IMAGED_AMQP_URL": AMQP_URL,
                "IMAGED_AMQP_PREFIX": self.namespace,
                "IMAGED_MONGODB_URL": MONGODB_URL,
                "IMAGED_MONGODB_DB": self.namespace,
                "IMAGED_IMAGE_DIR": str(self.image_dir),
                "IMAGED_ALIYUN_API_KEY": self.config.dashscope_api_key,
                "IMAGED_ALIYUN_BASE_URL": self.simulator.dashscope_base_url,
                "IMAGED_LIBLIBAI_ACCESS_KEY": self.config.liblib_access_key,
                "IMAGED_LIBLIBAI_SECRET_KEY": self.config.liblib_secret_key,
                "IMAGED_LIBLIBAI_BASE_URL": self.simulator.liblib_base_url,
                "IMAGED_POLL_FIRST_DELAY_S": "0.2",
                "IMAGED_POLL_MAX_INTERVAL_S": "0.5",
                "IMAGED_LEASE_TTL_S": "3",
                "IMAGED_SHUTDOWN_GRACE_S": "20",
                "IMAGED_LOG_FORMAT": "json",
                "IMAGED_LOG_LEVEL": "INFO",
                "IMAGED_DOWNLOAD_ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',  # the emulator's images
            }
        )
        env.update(self.extra_env)
        return env

    async def spawn(self) -> DaemonProcess:
        index = len(self.daemons)
        daemon = DaemonProcess(f"daemon-{index}", self.env(), self.workdir / f"daemon-{index}.log")
        await daemon.start()
        await daemon.wait_ready()
        self.daemons.append(daemon)
        return daemon

    async def restart(self, daemon: DaemonProcess) -> None:
        await daemon.start()
        await daemon.wait_ready()

    async def kill_all(self) -> None:
        for daemon in self.daemons:
            await daemon.kill()

    async def stop_all(self) -> list[int]:
        return [await d.terminate() for d in self.daemons if d.proc is not None]

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.log_tail(60)}" for d in self.daemons)


async def run_services(command: str) -> None:
    """Restart a local server through the project's own script (``restart-rabbitmq`` / ``restart-mongo``)."""
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SERVICES), command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"services.sh {command} failed:\n{out.decode(errors='replace')}")


async def publish_tasks(bus: Bus, bodies: Iterable[tuple[str, bytes]]) -> list[str]:
    ids = []
    for task_id, body in bodies:
        await bus.publish(body, message_id=task_id)
        ids.append(task_id)
    return ids


async def dead_letter_count(namespace: str) -> int:
    connection = await aio_pika.connect(AMQP_URL, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.dead", passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)
    finally:
        await connection.close()


async def stored_statuses(namespace: str, task_ids: Iterable[str]) -> dict[str, str]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=10000)
    try:
        docs = client[namespace]["tasks"].find({"_id": {"$in": list(task_ids)}})
        return {doc["_id"]: doc["status"] async for doc in docs}
    finally:
        await client.close()


@dataclass
class Tally:
    """What a reliability run must report: nothing lost, nothing duplicated."""

    name: str
    tasks: int
    lost: int
    duplicate_terminal_ids: int
    submissions: int
    leftover_partials: int
    secret_leaks: int
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps(
            {
                "run": self.name,
                **{k: v for k, v in self.__dict__.items() if k not in ("name", "extra")},
                **self.extra,
            }
        )

    def losses(self) -> dict[str, int]:
        """The counts that must be zero after every run, those that are not."""
        must_be_zero = {
            "lost": self.lost,
            "duplicate_terminal_ids": self.duplicate_terminal_ids,
            "secret_leaks": self.secret_leaks,
            "leftover_partials": self.leftover_partials,
        }
        return {name: count for name, count in must_be_zero.items() if count}


async def tally(name: str, cluster: Cluster, bus: Bus, task_ids: list[str], **extra: Any) -> Tally:
    stored = await stored_statuses(cluster.namespace, task_ids)
    terminal_words = {"completed", "failed", "canceled"}
    lost = [t for t in task_ids if not bus.terminal(t) or stored.get(t) not in terminal_words]
    duplicates = [t for t in task_ids if len({e["event_id"] for e in bus.terminal(t)}) > 1]
    stats = cluster.simulator.stats()["providers"]
    submissions = sum(int(p["submits"]) for p in stats.values())
    partials = leftover_parts(cluster.image_dir)
    leaks = secret_leaks(cluster, bus)
    return Tally(name, len(task_ids), len(lost), len(duplicates), submissions, len(partials), leaks, extra)


def secret_leaks(cluster: Cluster, bus: Bus) -> int:
    """How many daemon logs and events mention a provider secret (there must be none)."""
    secrets = [cluster.config.dashscope_api_key, cluster.config.liblib_secret_key]
    texts = [d.log_path.read_text(errors="replace") for d in cluster.daemons if d.log_path.exists()]
    texts += [json.dumps(events) for events in bus.events.values()]
    return sum(1 for text in texts for secret in secrets if secret in text)


# --- what every reliability run shares -------------------------------------------------------------------------

Report = Callable[[str], None]
MakeCluster = Callable[..., Awaitable[Cluster]]

# Daemons that submit fast and keep many tasks in flight (the runs that use them lift the emulator's limits too).
FAST = {
    "IMAGED_ALIYUN_SUBMIT_PER_SECOND": "50",
    "IMAGED_LIBLIBAI_SUBMIT_PER_SECOND": "50",
    "IMAGED_ALIYUN_MAX_IN_FLIGHT": "8",
    "IMAGED_LIBLIBAI_MAX_IN_FLIGHT": "8",
}
MIXED = ("wanx2.1-t2i-turbo", "star-3-alpha-t2i")


def mixed(n: int, models: tuple[str, ...] = MIXED) -> list[tuple[str, bytes]]:
    """``n`` original requests taking turns over ``models``, each with a fresh task id."""
    return [(f"r{i:05d}-{secrets.token_hex(4)}", seed_body(models[i % len(models)])) for i in range(n)]


@dataclass
class Reliability:
    """One reliability run: the clusters it builds, the bus, its report line, and its size (short, or ``--long``)."""

    make_cluster: MakeCluster
    bus: Bus
    report: Report
    long_run: bool

    def size(self, short: int, long: int) -> int:
        return long if self.long_run else short

    async def fast_cluster(self, task_seconds: float, **extra_env: str) -> tuple[Cluster, DaemonProcess]:
        """A cluster on an emulator without limits whose tasks take ``task_seconds``, with one FAST daemon up."""
        config = SimulatorConfig.without_limits(task_seconds=task_seconds)
        cluster = await self.make_cluster(config, **{**FAST, **extra_env})
        return cluster, await cluster.spawn()

    async def publish(self, n: int, models: tuple[str, ...] = MIXED) -> list[str]:
        return await publish_tasks(self.bus, mixed(n, models))

    async def kill_during_run(
        self, cluster: Cluster, daemon: DaemonProcess, ids: list[str], planned: int
    ) -> int:
        """``kill -9`` the daemon every 1-3 s (starting it again each time) until ``planned`` kills are done or
        every task has finished; returns the kills made."""
        kills = 0
        while kills < planned and not all(self.bus.terminal(t) for t in ids):
            await asyncio.sleep(random.uniform(1.0, 3.0))
            await daemon.kill()
            kills += 1
            await cluster.restart(daemon)
        return kills

    async def wait_all(self, cluster: Cluster, ids: list[str], within: float) -> None:
        """Every task has a terminal event (else fail with the daemons' logs); then late duplicates may arrive."""
        try:
            await self.bus.wait_terminal(ids, within=within)
        except TimeoutError:
            missing = [t for t in ids if not self.bus.terminal(t)]
            pytest.fail(
                f"{len(missing)} task(s) without a terminal event, e.g. {missing[:3]}\n{cluster.logs()}"
            )
        await asyncio.sleep(1.0)  # let late duplicates arrive before counting

    def statuses(self, ids: Iterable[str]) -> set[str]:
        """The statuses of every terminal event of these tasks."""
        return {event["status"] for task_id in ids for event in self.bus.terminal(task_id)}

    async def tally(self, name: str, cluster: Cluster, ids: list[str], **extra: Any) -> Tally:
        """Count the run, print its line, and fail if anything was lost, duplicated, leaked or left half-written."""
        result = await tally(name, cluster, self.bus, ids, **extra)
        self.report(result.line())
        assert not result.losses(), result.line()
        return result
