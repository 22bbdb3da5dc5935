"""The command line: the ``imaged`` click group, and one module per command group next to the code it drives.

==============  =================================================================
``daemon``      run, simulate, setup
``submit``      submit
``tasks``       status, result, tasks, cancel
``models``      models
``check``       check
``dead``        dead list, dead replay
``keys``        keys add, list, revoke, hash
``bench``       bench
``schema``      schema
``app``         settings, logging, the event loop, the wrapper of operator commands
``services``    the store and broker connections of the operator commands
``output``      tables, fields, JSON and error lines
``exits``       every exit code
==============  =================================================================

The command modules import only what every command needs; what one command alone needs (the daemon, the
emulator, the benchmark, JWT support, the provider plugins) is imported when it runs, so that ``imaged status`` starts quickly.
"""

from __future__ import annotations

import click

from .. import __version__
from . import bench, check, daemon, dead, keys, models, schema, submit, tasks, webhooks


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


COMMANDS: tuple[click.Command, ...] = (
    daemon.run,
    daemon.simulate,
    daemon.setup,
    submit.submit,
    tasks.status,
    tasks.result,
    tasks.tasks,
    tasks.cancel,
    models.models,
    check.check,
    dead.dead,
    keys.keys,
    bench.bench,
    schema.schema,
    webhooks.webhooks,
)
for _command in COMMANDS:
    main.add_command(_command)

__all__ = ["COMMANDS", "main"]
