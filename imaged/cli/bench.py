"""``imaged bench``: the workloads of ``imaged/bench/`` (B1-B4) with their references, as one JSON line."""

from __future__ import annotations

import json

import click

from .app import configure, load_settings, run_async

# imaged.bench (the daemon, the emulator, the workloads) is imported when the command runs.


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers") from None


@click.command()
@click.option(
    "--only",
    default="b1,b2,b3,b4",
    show_default=True,
    help="which workloads to run (comma-separated: b1 throughput, b2 concurrency, b3 lag, b4 download, "
    "b4s3 download into the bucket of IMAGED_S3_*)",
)
@click.option("--tasks", type=click.IntRange(1), default=2000, show_default=True, help="B1 tasks")
@click.option("--sizes", default="500,5000", show_default=True, help="B1 flatness: two sizes (0,0 skips)")
@click.option(
    "--retained",
    type=click.IntRange(0),
    default=100_000,
    show_default=True,
    help="finished tasks stored first",
)
@click.option("--caps", default="5,500,5000", show_default=True, help="B1 slot caps to count commands at")
@click.option("--cap-tasks", type=click.IntRange(1), default=500, show_default=True, help="tasks per cap")
@click.option("--b2-tasks", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--b2-seconds", type=click.FloatRange(0), default=20.0, show_default=True)
@click.option("--b3-tasks", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--b4-mb", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_context
def bench(
    ctx: click.Context,
    only: str,
    tasks: int,
    sizes: str,
    retained: int,
    caps: str,
    cap_tasks: int,
    b2_tasks: int,
    b2_seconds: float,
    b3_tasks: int,
    b4_mb: int,
) -> None:
    """Measure imaged against references taken in the same run; print one JSON line.

    Starts the provider emulator and a daemon of its own (in a fresh queue prefix and database) on the
    RabbitMQ and MongoDB of the settings. The defaults take several minutes; see the README for the figures.
    """
    from ..bench import WORKLOADS, BenchOptions, ProgressBar, run_bench

    settings = load_settings()
    configure(ctx, settings)
    chosen = tuple(w.strip().lower() for w in only.split(",") if w.strip())
    unknown = sorted(set(chosen) - set(WORKLOADS))
    if unknown:
        raise click.BadParameter(f"unknown workload(s) {', '.join(unknown)}", param_hint="--only")
    two = _numbers(sizes)
    if len(two) != 2:
        raise click.BadParameter("give two sizes, e.g. 500,5000", param_hint="--sizes")
    options = BenchOptions(
        only=chosen,
        tasks=tasks,
        sizes=(two[0], two[1]),
        retained=retained,
        caps=_numbers(caps),
        cap_tasks=cap_tasks,
        b2_tasks=b2_tasks,
        b2_seconds=b2_seconds,
        b3_tasks=b3_tasks,
        b4_megabytes=b4_mb,
    )
    report = run_async(run_bench(settings, options, ProgressBar()))
    click.echo(json.dumps(report, ensure_ascii=False))
