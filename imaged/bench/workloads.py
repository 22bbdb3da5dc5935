"""The workloads of ``imaged bench`` (quality.md B1-B4): a live daemon, the emulator, and requests through RabbitMQ.

A :class:`Stage` is one emulator and one daemon in a namespace of their own (queue prefix and database),
configured for a workload; :meth:`Stage.run_tasks` publishes requests and waits for every terminal event.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from pymongo import AsyncMongoClient

from ..broker import Topology, publish_request
from ..image_format import image_name
from ..images import CHUNK_BYTES, ImageDownloader
from ..netguard import AddressPolicy, guarded_connector
from ..storage import ImageStore, LocalStore
from ..storage.s3 import S3Settings, S3Store
from .processes import Daemon, Emulator, usage
from .references import raw_download, raw_upload, task_document

Progress = Callable[[str, int, int], None]

PUBLISH_CHUNK = 500
#: settings of the environment that must not leak into the measured daemon (real keys above all)
_OWN_PREFIXES = ("IMAGED_", "ALIYUN_", "LIBLIBAI_")
_OWN_NAMES = ("MONGODB_URL", "AMQP_URL", "RABBITMQ_URL")


def request_body(task_id: str) -> bytes:
    """One small-PNG LiblibAI request (512x512), the shape publishers send."""
    return json.dumps(
        {
            "task_id": task_id,
            "model": "star-3-alpha-t2i",
            "parameters": {
                "prompt": "1 girl,lotus leaf,masterpiece,best quality",
                "width": 512,
                "height": 512,
                "imgCount": 1,
            },
        }
    ).encode()


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES) and k not in _OWN_NAMES}


@dataclass
class RunResult:
    tasks: int
    seconds: float
    failed: int
    db_commands: float
    cpu_s: float
    #: provider task id -> wall-clock time its terminal event arrived
    arrivals: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "seconds": round(self.seconds, 3),
            "tasks_per_s": round(self.tasks_per_s, 1),
            "failed": self.failed,
            "db_commands_per_task": round(self.db_commands / self.tasks, 2),
            "daemon_cpu_ms_per_task": round(self.cpu_s * 1000 / self.tasks, 2),
        }


class Stage:
    """An emulator and a daemon for one workload, and a bus to publish and listen."""

    def __init__(
        self,
        work_dir: Path,
        amqp_url: str,
        mongodb_url: str,
        *,
        name: str,
        task_seconds: float = 0.0,
        cap: int = 10_000,
        daemon_env: dict[str, str] | None = None,
    ) -> None:
        self.namespace = f"bench{secrets.token_hex(4)}"
        self.amqp_url = amqp_url
        self.mongodb_url = mongodb_url
        self.dir = work_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        env = clean_environment()
        self.emulator = Emulator(env, self.dir / "emulator.log", task_seconds)
        self.cap = cap
        self.daemon_env = {
            **env,
            "IMAGED_AMQP_URL": amqp_url,
            "IMAGED_MONGODB_URL": mongodb_url,
            "IMAGED_AMQP_PREFIX": self.namespace,
            "IMAGED_MONGODB_DB": self.namespace,
            "IMAGED_IMAGE_DIR": str(self.dir / "images"),
            "IMAGED_LOG_LEVEL": "WARNING",
            "IMAGED_LOG_FORMAT": "json",
            "IMAGED_DOWNLOAD_ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',  # the emulator's images
            # Caps lifted: imaged's own limits out of the way, as the emulator's are.
            "IMAGED_LIBLIBAI_MAX_IN_FLIGHT": str(cap),
            "IMAGED_LIBLIBAI_SUBMIT_PER_SECOND": "1000000",
            "IMAGED_ALIYUN_MAX_IN_FLIGHT": str(cap),
            "IMAGED_ALIYUN_SUBMIT_PER_SECOND": "1000000",
            "IMAGED_ALIYUN_POLL_PER_SECOND": "1000000",
            **(daemon_env or {}),
        }
        self.daemon: Daemon | None = None
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def __aenter__(self) -> Stage:
        await self.emulator.start()
        self.daemon_env.update(
            {
                "IMAGED_LIBLIBAI_ACCESS_KEY": "sim-access",
                "IMAGED_LIBLIBAI_SECRET_KEY": "sim-secret",
                "IMAGED_LIBLIBAI_BASE_URL": self.emulator.url,
                "IMAGED_ALIYUN_API_KEY": "sk-sim",
                "IMAGED_ALIYUN_BASE_URL": f"{self.emulator.url}/api/v1",
            }
        )
        self.connection = await aio_pika.connect(self.amqp_url, timeout=10)
        self.channel = await self.connection.channel(publisher_confirms=True)
        return self

    async def start_daemon(self) -> Daemon:
        self.daemon = Daemon(self.daemon_env, self.dir / "daemon.log")
        await self.daemon.start()
        return self.daemon

    async def __aexit__(self, *exc: object) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
        await self.emulator.stop()
        await self._drop()
        if self.connection is not None:
            await self.connection.close()

    async def _drop(self) -> None:
        """Remove the stage's queues, exchanges and database."""
        if self.connection is not None:
            for queue in ("requests", "dead", "dead.watch", "work.liblibai", "work.aliyun", "capture"):
                channel = await self.connection.channel()
                try:
                    await channel.queue_delete(f"{self.namespace}.{queue}")
                except aio_pika.exceptions.AMQPError:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()
            for exchange in ("events", "dlx", "control"):
                channel = await self.connection.channel()
                try:
                    await channel.exchange_delete(f"{self.namespace}.{exchange}")
                except aio_pika.exceptions.AMQPError:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongodb_url)
        try:
            await client.drop_database(self.namespace)
        finally:
            await client.close()

    async def prefill(self, count: int, progress: Progress) -> None:
        """Store ``count`` finished tasks, as a daemon that ran for a while would have kept them."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongodb_url, retryWrites=False)
        try:
            tasks = client[self.namespace]["tasks"]
            done = 0
            while done < count:
                batch = [
                    task_document(f"old{n:08d}", finished=True) for n in range(done, min(count, done + 1000))
                ]
                await tasks.insert_many(batch, ordered=False)
                done += len(batch)
                progress("retained tasks", done, count)
        finally:
            await client.close()

    async def run_tasks(self, count: int, progress: Progress, label: str) -> RunResult:
        """Publish ``count`` requests and wait until every one has its terminal event."""
        assert self.channel is not None and self.daemon is not None
        exchange = await self.channel.declare_exchange(
            f"{self.namespace}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        capture = await self.channel.declare_queue(f"{self.namespace}.capture", auto_delete=True)
        for status in ("completed", "failed", "canceled"):
            await capture.bind(exchange, routing_key=f"task.{status}")
        ids = [secrets.token_hex(12) for _ in range(count)]
        wanted = set(ids)
        finished: set[str] = set()
        failed = 0
        arrivals: dict[str, float] = {}
        all_done = asyncio.Event()

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal failed
            event = json.loads(message.body)
            task_id = event["task_id"]
            if task_id in wanted and task_id not in finished:
                finished.add(task_id)
                if event["status"] != "completed":
                    failed += 1
                elif event.get("result"):
                    arrivals[event["result"]["id"]] = time.time()
                progress(label, len(finished), count)
                if len(finished) == count:
                    all_done.set()

        tag = await capture.consume(on_event, no_ack=True)
        commands_before = await self.daemon.db_commands()
        cpu_before = self.daemon.usage().cpu_s
        started = time.perf_counter()
        for chunk in range(0, count, PUBLISH_CHUNK):
            await asyncio.gather(
                *(
                    publish_request(
                        self.channel, Topology(self.namespace), request_body(task_id), message_id=task_id
                    )
                    for task_id in ids[chunk : chunk + PUBLISH_CHUNK]
                )
            )
        await asyncio.wait_for(all_done.wait(), 3600)
        seconds = time.perf_counter() - started
        cpu = self.daemon.usage().cpu_s - cpu_before
        commands = await self.daemon.db_commands() - commands_before
        await capture.cancel(tag)
        return RunResult(count, seconds, failed, commands, cpu, arrivals)


@dataclass
class Measured:
    """One image through imaged's downloader into a store: how long, and the memory it took."""

    seconds: float
    storage_url: str
    peak_alloc: int
    rss_growth: int


def bench_image_url(emulator: Emulator, megabytes: int) -> str:
    side = int((megabytes * 1_000_000 / 3) ** 0.5)  # noise PNGs take about 3 bytes a pixel
    return f"{emulator.url}/_sim/images/liblibai_bench_0_{side}x{side}_noise.png"


async def measure_download(url: str, store: ImageStore, max_bytes: int) -> Measured:
    """Download ``url`` into ``store`` with imaged's downloader, timed, with Python's peak allocation and RSS."""
    before = usage(os.getpid())
    tracemalloc.start()
    try:
        policy = AddressPolicy(["127.0.0.0/8", "::1/128"])  # the emulator, on loopback
        async with aiohttp.ClientSession(connector=guarded_connector(policy)) as http:
            downloader = ImageDownloader(http, store, max_bytes=max_bytes, timeout_s=300, policy=policy)
            started = time.perf_counter()
            saved = await downloader.download(
                url, lambda ext: image_name("liblibai", datetime.now(), 0, ext, "bench")
            )
            seconds = time.perf_counter() - started
        _, peak_alloc = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = usage(os.getpid())
    return Measured(seconds, saved.storage_url, peak_alloc, max(0, after.peak_rss - before.peak_rss))


def figures(size: int, measured: Measured, reference_s: float) -> dict[str, Any]:
    return {
        "bytes": size,
        "mb_per_s": round(size / measured.seconds / 1e6, 1),
        "reference_mb_per_s": round(size / reference_s / 1e6, 1),
        "ratio": round(reference_s / measured.seconds, 3),
        "python_peak_alloc_bytes": measured.peak_alloc,
        "rss_growth_bytes": measured.rss_growth,
    }


async def download_benchmark(emulator: Emulator, work_dir: Path, megabytes: int) -> dict[str, Any]:
    """B4: one large image through imaged's downloader, against a bare aiohttp download of the same file."""
    url = bench_image_url(emulator, megabytes)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:  # the emulator renders it once
        resp.raise_for_status()
        await resp.read()
    raw_s, size = await raw_download(url, work_dir / "raw.bin", CHUNK_BYTES)
    store = LocalStore(work_dir / "b4-images")
    measured = await measure_download(url, store, max_bytes=size * 2)
    await store.delete([measured.storage_url])
    return {**figures(size, measured, raw_s), "chunk_bytes": CHUNK_BYTES}


async def upload_benchmark(
    emulator: Emulator, work_dir: Path, megabytes: int, s3: S3Settings
) -> dict[str, Any]:
    """B4 to S3: one large image streamed from the emulator into the bucket by imaged's downloader, against a raw
    upload of the same file with the same client (multipart, the same part size)."""
    url = bench_image_url(emulator, megabytes)
    source = work_dir / "b4s3.png"
    _, size = await raw_download(url, source, CHUNK_BYTES, keep=True)
    store = S3Store(s3.model_copy(update={"prefix": f"{s3.prefix}bench-{secrets.token_hex(4)}/"}))
    await store.start()
    try:
        raw_s = await raw_upload(store, source, "raw.png")
        measured = await measure_download(url, store, max_bytes=size * 2)
        await store.delete([measured.storage_url, f"s3://{store.bucket}/{store.prefix}raw.png"])
    finally:
        await store.close()
        await asyncio.to_thread(source.unlink, missing_ok=True)
    return {
        **figures(size, measured, raw_s),
        "part_bytes": s3.part_bytes,
        "reference": "the same file uploaded from disk with the same client and part size",
    }
