"""``imaged bench``: throughput, concurrency, completion lag and download figures, each with its reference.

Every figure is measured against a reference taken in the same run on the same machine and services
(quality.md B1-B4), because absolute times on shared machines mean little. The result is one JSON line.

- B1: tasks/s end to end (publish to terminal event) with the emulator's task time at 0 and every cap lifted,
  against the raw broker round trip and the database floor; database commands and daemon CPU per task; the
  same at two sizes with many finished tasks retained (cost per task must not grow), and at several slot caps.
- B2: thousands of concurrent tasks of 20 s: wall time against the task time, peak memory per task in flight.
- B3: completion lag (terminal event time - the emulator's completion time) at 1,000 in flight, default
  polling, against the poll interval cap.
- B4: one large image through imaged's downloader against a bare aiohttp download; ``b4s3`` the same into the
  S3 bucket of ``IMAGED_S3_*`` against a raw upload of the same file with the same client.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..settings import Settings
from ..storage.s3 import S3Settings
from .references import broker_round_trip, database_floor
from .workloads import Stage, download_benchmark, request_body, upload_benchmark

WORKLOADS = ("b1", "b2", "b3", "b4", "b4s3")


@dataclass
class BenchOptions:
    """What to run, and how big. The defaults are quality.md's."""

    only: tuple[str, ...] = ("b1", "b2", "b3", "b4")  # b4s3 needs a bucket (IMAGED_S3_*)
    tasks: int = 2000
    sizes: tuple[int, int] = (500, 5000)
    retained: int = 100_000
    caps: tuple[int, ...] = (5, 500, 5000)
    cap_tasks: int = 500
    b2_tasks: int = 5000
    b2_seconds: float = 20.0
    b3_tasks: int = 1000
    b3_seconds: float = 20.0
    b3_jitter: float = 10.0
    b4_megabytes: int = 20


class ProgressBar:
    """One line on standard error, redrawn in place; silent when standard error is not a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r{label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}  ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"{text}\n")
            sys.stderr.flush()


def _ratio(value: float, reference: float) -> float:
    return round(value / reference, 3) if reference else 0.0


async def run_bench(settings: Settings, options: BenchOptions, progress: ProgressBar) -> dict[str, Any]:
    amqp_url = settings.amqp_url.get_secret_value()
    mongodb_url = settings.mongodb_url.get_secret_value()
    report: dict[str, Any] = {
        "bench": "imaged",
        "version": __version__,
        "cpus": os.cpu_count(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="imaged-bench-") as tmp:
        work = Path(tmp)

        def stage(name: str, **kwargs: Any) -> Stage:
            return Stage(work, amqp_url, mongodb_url, name=name, **kwargs)

        if "b4" in options.only:
            progress.note(f"B4: a {options.b4_megabytes} MB image")
            async with stage("b4") as s:
                report["b4"] = await download_benchmark(s.emulator, s.dir, options.b4_megabytes)
        if "b4s3" in options.only:
            progress.note(f"B4 to S3: a {options.b4_megabytes} MB image into the bucket of IMAGED_S3_*")
            async with stage("b4s3") as s:
                report["b4s3"] = await upload_benchmark(s.emulator, s.dir, options.b4_megabytes, S3Settings())
        if "b1" in options.only:
            report["b1"] = await _throughput(stage, options, progress, amqp_url, mongodb_url)
        if "b2" in options.only:
            report["b2"] = await _concurrency(stage, options, progress)
        if "b3" in options.only:
            report["b3"] = await _completion_lag(stage, options, progress)
    return report


async def _throughput(
    stage: Any, options: BenchOptions, progress: ProgressBar, amqp_url: str, mongodb_url: str
) -> dict[str, Any]:
    n = options.tasks
    progress.note(f"B1: references for {n} tasks (raw broker round trip, database floor)")
    body = request_body("0" * 24)
    figures: dict[str, Any] = {}
    async with stage("b1", daemon_env={"IMAGED_POLL_FIRST_DELAY_S": "0"}) as s:
        broker = await broker_round_trip(amqp_url, body, n, s.namespace)
        floor = await database_floor(mongodb_url, s.namespace, n)
        await s.start_daemon()
        run = await s.run_tasks(n, progress, f"B1 {n} tasks")
        figures.update(run.figures())
    figures["reference"] = {
        "broker_round_trip_msg_per_s": round(broker, 1),
        "database_floor_tasks_per_s": round(floor, 1),
    }
    figures["of_database_floor"] = _ratio(run.tasks_per_s, floor)
    figures["of_broker_round_trip"] = _ratio(run.tasks_per_s, broker)

    small, large = options.sizes
    if small and large:
        progress.note(f"B1 flat: {small} then {large} tasks with {options.retained} finished tasks retained")
        async with stage("b1-flat", daemon_env={"IMAGED_POLL_FIRST_DELAY_S": "0"}) as s:
            if options.retained:
                await s.prefill(options.retained, progress)
            await s.start_daemon()
            first = await s.run_tasks(small, progress, f"B1 {small} tasks")
            second = await s.run_tasks(large, progress, f"B1 {large} tasks")
        figures["flat"] = {
            "retained": options.retained,
            str(small): first.figures(),
            str(large): second.figures(),
            "tasks_per_s_ratio": _ratio(second.tasks_per_s, first.tasks_per_s),
        }
    caps: dict[str, Any] = {}
    for cap in options.caps:
        progress.note(f"B1 caps: slot cap {cap}, {options.cap_tasks} tasks")
        async with stage(f"b1-cap{cap}", cap=cap, daemon_env={"IMAGED_POLL_FIRST_DELAY_S": "0"}) as s:
            await s.start_daemon()
            caps[str(cap)] = (await s.run_tasks(options.cap_tasks, progress, f"B1 cap {cap}")).figures()
    if caps:
        figures["slot_caps"] = caps
    return figures


async def _concurrency(stage: Any, options: BenchOptions, progress: ProgressBar) -> dict[str, Any]:
    n, seconds = options.b2_tasks, options.b2_seconds
    progress.note(f"B2: {n} concurrent tasks of {seconds:g} s")
    async with stage("b2", task_seconds=seconds) as s:
        daemon = await s.start_daemon()
        before = daemon.usage()
        run = await s.run_tasks(n, progress, f"B2 {n} x {seconds:g}s")
        after = daemon.usage()
    grown = max(0, after.peak_rss - before.rss)
    return {
        **run.figures(),
        "ideal_seconds": seconds,
        "wall_over_ideal": _ratio(run.seconds, seconds),
        "rss_before_bytes": before.rss,
        "peak_rss_bytes": after.peak_rss,
        "rss_per_task_in_flight_bytes": grown // n if n else 0,
    }


async def _completion_lag(stage: Any, options: BenchOptions, progress: ProgressBar) -> dict[str, Any]:
    n = options.b3_tasks
    progress.note(f"B3: {n} tasks in flight, default polling")
    async with stage("b3", task_seconds=options.b3_seconds) as s:
        await s.emulator.configure(jitter_seconds=options.b3_jitter)
        await s.start_daemon()
        run = await s.run_tasks(n, progress, f"B3 {n} tasks")
        ends = await s.emulator.task_ends()
    lags = sorted(arrived - ends[task] for task, arrived in run.arrivals.items() if task in ends)
    defaults = Settings.model_fields
    cap = min(float(defaults["poll_max_interval_s"].default), 10.0)  # LiblibAI's own cap is 10 s
    p50 = statistics.median(lags) if lags else 0.0
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0.0
    return {
        "tasks": n,
        "failed": run.failed,
        "lag_p50_s": round(p50, 3),
        "lag_p99_s": round(p99, 3),
        "lag_max_s": round(lags[-1], 3) if lags else 0.0,
        "reference_poll_cap_s": cap,
        "p99_within_cap_plus_1s": p99 <= cap + 1.0,
    }
