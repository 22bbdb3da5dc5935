"""``imaged run``, ``imaged simulate`` and ``imaged setup``: the daemon, the provider emulator, the topology.

``run --simulate`` starts the emulator in-process and points the providers at it (with a banner, so nobody
mistakes its test patterns for model output). A start that cannot use the broker or the database ends in one
line, without a traceback, with the exit code ``imaged check`` gives the same failure (12, 13).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

import click
from pydantic import SecretStr

from ..broker import Broker, Topology
from ..catalog import Catalog
from ..diagnose import StartupError
from ..errors import ImagedError
from ..logs import use_redactor
from ..replicas import Replicas
from ..settings import Settings
from ..store import MongoTaskStore
from .app import configure, load_settings, redactor_of, run_async
from .exits import EXIT_FAILED, STARTUP_EXIT_CODES

if TYPE_CHECKING:
    from ..providers.base import ProviderSettings
    from ..simulator import Simulator, SimulatorConfig

# The daemon and the emulator are imported by the commands that start them, not by every start of `imaged`.

SIM_BANNER = """
************************************************************************************
*  SIMULATION MODE: no provider keys are in use. Requests go to imaged's built-in  *
*  provider emulator at {url:<59}*
*  and the images are generated test patterns, not real model output.             *
************************************************************************************"""

#: the in-process emulator serves its images on loopback: downloads must be allowed to reach it
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


@click.command()
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
    configure(ctx, settings)
    try:
        run_async(_run_daemon(settings, simulate, simulate_without_keys, task_seconds))
    except StartupError as exc:  # one line, no traceback, the exit code of the matching `imaged check`
        click.echo(f"Error: {exc}", err=True)
        sys.exit(STARTUP_EXIT_CODES.get(exc.service, EXIT_FAILED))
    except ImagedError as exc:
        raise click.ClickException(str(exc)) from exc


async def _run_daemon(
    settings: Settings, simulate: bool, simulate_without_keys: bool, task_seconds: float
) -> None:
    from ..daemon import Daemon
    from ..providers.registry import load_provider_settings, providers_with_credentials
    from ..simulator import Simulator, SimulatorConfig

    if simulate_without_keys and not await providers_with_credentials(load_provider_settings()):
        simulate = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    simulator: Simulator | None = None
    providers: dict[str, ProviderSettings] | None = None
    if simulate:
        config = SimulatorConfig(task_seconds=task_seconds)
        simulator = Simulator(config)
        await simulator.start()
        settings, providers = simulated_settings(settings, simulator, config)
        use_redactor(redactor_of(settings, providers))
        click.echo(SIM_BANNER.format(url=simulator.url), err=True)
    try:
        await Daemon(settings, provider_settings=providers).run_until(stop)
    finally:
        if simulator is not None:
            await simulator.stop()


def simulated_settings(
    settings: Settings, simulator: Simulator, config: SimulatorConfig
) -> tuple[Settings, dict[str, ProviderSettings]]:
    """The settings with the built-in providers pointed at the in-process emulator, with its keys (their other
    settings, such as limits, still come from the environment)."""
    from ..providers.aliyun import AliyunProvider
    from ..providers.liblibai import LiblibProvider

    providers = {
        "aliyun": AliyunProvider.load_settings(
            api_key=SecretStr(config.dashscope_api_key), base_url=simulator.dashscope_base_url
        ),
        "liblibai": LiblibProvider.load_settings(
            access_key=SecretStr(config.liblib_access_key),
            secret_key=SecretStr(config.liblib_secret_key),
            base_url=simulator.liblib_base_url,
        ),
    }
    networks = [*settings.download_allowed_networks, *LOOPBACK_NETWORKS]
    return settings.model_copy(update={"download_allowed_networks": networks}), providers


@click.command()
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
    from ..simulator import SimulatorConfig, run_simulator

    settings = load_settings()
    configure(ctx, settings)
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


@click.command()
@click.pass_context
def setup(ctx: click.Context) -> None:
    """Declare the RabbitMQ topology and create the MongoDB indexes."""
    settings = load_settings()
    configure(ctx, settings)
    run_async(_setup(settings))
    click.echo("topology declared and indexes created")


async def _setup(settings: Settings) -> None:
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
