"""The command line: parse options, configure logging once, build settings, run."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import SecretStr, ValidationError

from . import __version__
from .contract import Status
from .diagnose import StartupError
from .errors import ImagedError
from .logs import configure_logging, use_redactor
from .redact import Redactor
from .settings import Settings

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_CONFIG = 3


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where available (the daemon's loop), else the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)
    return uvloop.run(coro)


def describe_settings_error(exc: ValidationError) -> str:
    """Which settings are wrong and why, without echoing their values (they may be secrets)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]] or ["settings"]
        head = loc[0] if loc[0].isupper() else f"IMAGED_{loc[0].upper()}"  # an alias is its own name
        parts.append(f"{'.'.join([head, *loc[1:]])}: {err['msg']}")
    return "; ".join(parts)


class ConfigException(click.ClickException):
    """The settings cannot be loaded; exit code 3."""

    exit_code = EXIT_CONFIG


#: the same codes as ``imaged check``: 12 broker, 13 database (HTTP: 1)
STARTUP_EXIT_CODES = {"broker": 12, "database": 13}


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigException(f"invalid configuration: {describe_settings_error(exc)}") from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


@click.group()
@click.version_option(__version__, prog_name="imaged")
@click.option(
    "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: IMAGED_LOG_LEVEL or INFO)"
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """imaged: image-generation requests from RabbitMQ, driven to images on disk."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level


def _configure(ctx: click.Context, settings: Settings) -> None:
    configure_logging(
        ctx.obj.get("log_level") or settings.log_level, settings.log_format, Redactor.from_settings(settings)
    )


SIM_BANNER = """
************************************************************************************
*  SIMULATION MODE: no provider keys are in use. Requests go to imaged's built-in  *
*  provider emulator at {url:<59}*
*  and the images are generated test patterns, not real model output.             *
************************************************************************************"""


@main.command()
@click.option(
    "--simulate", is_flag=True, help="start the embedded provider emulator and point the providers at it"
)
@click.option(
    "--simulate-without-keys",
    is_flag=True,
    help="simulate only when no provider key is configured (what `make run` uses)",
)
@click.option("--task-seconds", type=float, default=2.0, show_default=True, help="emulated task duration")
@click.pass_context
def run(ctx: click.Context, simulate: bool, simulate_without_keys: bool, task_seconds: float) -> None:
    """Run the daemon until SIGTERM or Ctrl-C."""
    settings = load_settings()
    _configure(ctx, settings)
    if simulate_without_keys and not settings.has_provider_keys():
        simulate = True
    try:
        run_async(_run_daemon(settings, simulate, task_seconds))
    except StartupError as exc:  # one line, no traceback, the exit code of the matching `imaged check`
        click.echo(f"Error: {exc}", err=True)
        sys.exit(STARTUP_EXIT_CODES.get(exc.service, 1))
    except ImagedError as exc:
        raise click.ClickException(str(exc)) from exc


async def _run_daemon(settings: Settings, simulate: bool, task_seconds: float) -> None:
    from .daemon import Daemon
    from .simulator import Simulator, SimulatorConfig

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    simulator: Simulator | None = None
    if simulate:
        config = SimulatorConfig(task_seconds=task_seconds)
        simulator = Simulator(config)
        await simulator.start()
        settings = simulated_settings(settings, simulator, config)
        use_redactor(Redactor.from_settings(settings))
        click.echo(SIM_BANNER.format(url=simulator.url), err=True)
    try:
        await Daemon(settings).run_until(stop)
    finally:
        if simulator is not None:
            await simulator.stop()


#: the in-process emulator serves its images on loopback: downloads must be allowed to reach it
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


def simulated_settings(settings: Settings, simulator: Any, config: Any) -> Settings:
    return settings.model_copy(
        update={
            "aliyun_api_key": SecretStr(config.dashscope_api_key),
            "aliyun_base_url": simulator.dashscope_base_url,
            "liblibai_access_key": SecretStr(config.liblib_access_key),
            "liblibai_secret_key": SecretStr(config.liblib_secret_key),
            "liblibai_base_url": simulator.liblib_base_url,
            "download_allowed_networks": [*settings.download_allowed_networks, *LOOPBACK_NETWORKS],
        }
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8900, show_default=True, type=int)
@click.option(
    "--task-seconds", type=float, default=2.0, show_default=True, help="emulated task duration (0: instant)"
)
@click.option("--dashscope-key", default="sk-sim", show_default=True)
@click.option("--access-key", default="sim-access", show_default=True, help="LiblibAI AccessKey")
@click.option("--secret-key", default="sim-secret", show_default=True, help="LiblibAI SecretKey")
@click.option("--no-limits", is_flag=True, help="lift the providers' concurrency and rate limits")
@click.option(
    "--public-url",
    default=None,
    help="base of the image URLs handed out, when clients reach the emulator under another name",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    host: str,
    port: int,
    task_seconds: float,
    dashscope_key: str,
    access_key: str,
    secret_key: str,
    no_limits: bool,
    public_url: str | None,
) -> None:
    """Run the provider emulator alone (DashScope at /api/v1, LiblibAI at /)."""
    from .simulator import SimulatorConfig, run_simulator

    settings = load_settings()
    _configure(ctx, settings)
    make_config = SimulatorConfig.without_limits if no_limits else SimulatorConfig
    config = make_config(
        dashscope_api_key=dashscope_key,
        liblib_access_key=access_key,
        liblib_secret_key=secret_key,
        task_seconds=task_seconds,
        public_url=public_url,
    )
    click.echo(
        f"emulator: DashScope at http://{host}:{port}/api/v1, LiblibAI at http://{host}:{port}", err=True
    )
    run_async(run_simulator(config, host, port))


@main.command()
@click.pass_context
def setup(ctx: click.Context) -> None:
    """Declare the RabbitMQ topology and create the MongoDB indexes."""
    settings = load_settings()
    _configure(ctx, settings)
    run_async(_setup(settings))
    click.echo("topology declared and indexes created")


async def _setup(settings: Settings) -> None:
    from .broker import Broker, Topology
    from .catalog import Catalog
    from .replicas import Replicas
    from .store import MongoTaskStore

    catalog = Catalog.load(settings.catalog_path)
    store = MongoTaskStore.connect(settings.mongodb_url.get_secret_value(), settings.mongodb_db)
    broker = Broker(settings.amqp_url.get_secret_value(), Topology.from_settings(settings))
    try:
        await store.ensure_indexes()
        await Replicas(store.db["replicas"], "setup", settings.lease_ttl_s).ensure_indexes()
        await broker.connect()
        assert broker.channel is not None
        await broker.declare(broker.channel, catalog.providers())
    finally:
        await broker.close()
        await store.close()


@main.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="model name (see config/models.toml)")
@click.option("--prompt", help="the prompt (sets parameters.prompt)")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="a parameter; VALUE is JSON if it parses",
)
@click.option("--task-id", help="idempotency key")
@click.option("--wait", is_flag=True, help="follow the task's events and exit non-zero unless it completes")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait with --wait")
@click.option("--json", "as_json", is_flag=True, help="print events as JSON lines")
@click.pass_context
def submit(
    ctx: click.Context,
    file: Path | None,
    model: str | None,
    prompt: str | None,
    params: tuple[str, ...],
    task_id: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Publish one request (from FILE, a JSON request body, or from flags) to the request queue."""
    settings = load_settings()
    _configure(ctx, settings)
    from .submit import build_request, submit_request

    try:
        body = build_request(file, model, prompt, params, task_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    code = run_async(submit_request(settings, body, wait=wait, wait_s=timeout, as_json=as_json))
    sys.exit(code)


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers") from None


@main.command()
@click.option(
    "--only",
    default="b1,b2,b3,b4",
    show_default=True,
    help="which workloads to run (comma-separated: b1 throughput, b2 concurrency, b3 lag, b4 download)",
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
    from .bench import WORKLOADS, BenchOptions, ProgressBar, run_bench

    settings = load_settings()
    _configure(ctx, settings)
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


@main.command()
@click.option(
    "--output", "-o", type=click.Path(file_okay=False, path_type=Path), help="write one file per schema"
)
def schema(output: Path | None) -> None:
    """Print (or write) the JSON Schemas of the request, event, result and error messages."""
    from .contract import json_schemas

    schemas = json_schemas()
    if output is None:
        click.echo(json.dumps(schemas, indent=2, ensure_ascii=False))
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, value in schemas.items():
        (output / f"{name}.schema.json").write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    click.echo(f"wrote {len(schemas)} schemas to {output}")


# -- operator commands (implemented in admin.py; they talk to MongoDB and RabbitMQ directly) -------------------

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")


def _admin(ctx: click.Context, command: Callable[[Settings], Coroutine[Any, Any, int]]) -> None:
    """Load settings, run an admin coroutine, exit with its code; an outage is a message, not a traceback."""
    from .admin import EXIT_UNAVAILABLE, Unavailable

    settings = load_settings()
    _configure(ctx, settings)
    try:
        code = run_async(command(settings))
    except Unavailable as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_UNAVAILABLE
    sys.exit(code)


@main.command()
@click.argument("task_id")
@json_option
@click.pass_context
def status(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show a task's status (exit 4 if there is no such task)."""
    from .admin import show_status

    _admin(ctx, lambda s: show_status(s, task_id, as_json))


@main.command()
@click.argument("task_id")
@json_option
@click.pass_context
def result(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show a task's result: exit 0 completed, 1 failed or canceled, 2 not finished, 4 no such task."""
    from .admin import show_result

    _admin(ctx, lambda s: show_result(s, task_id, as_json))


@main.command()
@click.option(
    "--status", "status_", type=click.Choice([s.value for s in Status]), help="only tasks in this status"
)
@click.option("--owner", help="only this tenant's tasks")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
@click.pass_context
def tasks(
    ctx: click.Context, status_: str | None, owner: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List tasks, newest first."""
    from .admin import list_tasks

    _admin(
        ctx,
        lambda s: list_tasks(s, status=status_, owner=owner, limit=limit, offset=offset, as_json=as_json),
    )


@main.command()
@click.argument("task_id")
@json_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Ask the daemon to cancel a task (exit 4: no such task, 5: it has finished already)."""
    from .admin import cancel_task

    _admin(ctx, lambda s: cancel_task(s, task_id, as_json))


@main.command()
@json_option
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the model catalog and whether each provider has credentials."""
    from .admin import list_models

    _admin(ctx, lambda s: list_models(s, as_json))


@main.command()
@json_option
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Check configuration and connectivity; no secret is printed.

    \b
    Exit codes (the first failing check wins):
      3 settings invalid   10 catalog   11 authentication   12 broker
      13 database          14 image directory                15 provider keys missing
    """
    from .admin import check as run_check

    _admin(ctx, lambda s: run_check(s, as_json))


@main.group()
def dead() -> None:
    """Dead letters in <prefix>.dead: list them, or replay them to their queue."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@click.pass_context
def dead_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show dead letters with their reason and headers; they stay in the queue."""
    from .admin import dead_list as run

    _admin(ctx, lambda s: run(s, limit, as_json))


@dead.command("replay")
@click.argument("message_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
@click.option("--limit", type=click.IntRange(1, 100_000), default=10_000, show_default=True)
@json_option
@click.pass_context
def dead_replay(
    ctx: click.Context, message_ids: tuple[str, ...], replay_all: bool, limit: int, as_json: bool
) -> None:
    """Publish the dead letters with these message ids (or --all) back to their original queue."""
    from .admin import dead_replay as run

    if not message_ids and not replay_all:
        raise click.UsageError("name message ids to replay, or use --all")
    _admin(ctx, lambda s: run(s, message_ids, replay_all, limit, as_json))


@main.group()
def keys() -> None:
    """API keys of the HTTP API (stored in MongoDB as digests only)."""


@keys.command("add")
@click.argument("tenant")
@click.option("--label", default="", help="a note to tell keys apart")
@json_option
@click.pass_context
def keys_add(ctx: click.Context, tenant: str, label: str, as_json: bool) -> None:
    """Create a key for TENANT and print it once (only its digest is stored)."""
    from .admin import keys_add as run

    _admin(ctx, lambda s: run(s, tenant, label, as_json))


@keys.command("list")
@click.option("--active", is_flag=True, help="leave out revoked keys")
@json_option
@click.pass_context
def keys_list(ctx: click.Context, active: bool, as_json: bool) -> None:
    """List key ids, tenants and states (never the keys)."""
    from .admin import keys_list as run

    _admin(ctx, lambda s: run(s, not active, as_json))


@keys.command("revoke")
@click.argument("key_id")
@json_option
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Revoke a key by its id (daemons stop accepting it within IMAGED_API_KEY_CACHE_S)."""
    from .admin import keys_revoke as run

    _admin(ctx, lambda s: run(s, key_id, as_json))


@keys.command("hash")
def keys_hash() -> None:
    """Read a key on standard input; print the digest to put in IMAGED_API_KEYS."""
    from .admin import keys_hash as run

    settings = load_settings()
    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("give the key on standard input")
    click.echo(run(settings, key))


if __name__ == "__main__":  # pragma: no cover
    main()
