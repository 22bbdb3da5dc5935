"""What every command shares: the settings, logging, the event loop, and the one wrapper of operator commands.

An operator command is ``async def command(settings, **options) -> int`` decorated with :func:`operator_command`:
the wrapper loads the settings (exit 3 when they are invalid), configures logging once with a redactor built
from them, runs the coroutine on the daemon's event loop and exits with the code it returns. A database or
broker that cannot be reached is an :class:`Unavailable`: one ``error:`` line and exit 6, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from ..errors import ConfigError
from ..logs import configure_logging
from ..redact import Redactor
from ..settings import Settings, describe_settings_error
from .exits import EXIT_CONFIG, EXIT_UNAVAILABLE
from .output import fail

T = TypeVar("T")
P = ParamSpec("P")

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where available (the daemon's loop), else the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)
    return uvloop.run(coro)


class ConfigException(click.ClickException):
    """The settings cannot be loaded; exit code 3."""

    exit_code = EXIT_CONFIG


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigException(f"invalid configuration: {describe_settings_error(exc)}") from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def configure(ctx: click.Context, settings: Settings) -> None:
    """Logging, once per process: ``--log-level`` or the settings' level, every line redacted."""
    configure_logging(
        ctx.obj.get("log_level") or settings.log_level, settings.log_format, redactor_of(settings)
    )


def redactor_of(settings: Settings, providers: Mapping[str, Any] | None = None) -> Redactor:
    """A redactor of every secret imaged knows: the core settings' and every provider's."""
    from ..providers.registry import load_provider_settings

    try:
        models = [settings, *load_provider_settings(providers).values()]
    except ConfigError:  # a provider's settings are invalid: the command reports it; redact what is known
        models = [settings]
    return Redactor.from_models(models)


class Unavailable(Exception):
    """A backing service could not be reached; the message is safe to print."""


def run_operator(ctx: click.Context, command: Callable[[Settings], Coroutine[Any, Any, int]]) -> NoReturn:
    """Load settings, run an operator coroutine, exit with its code; an outage is a message, not a traceback."""
    settings = load_settings()
    configure(ctx, settings)
    try:
        code = run_async(command(settings))
    except Unavailable as exc:
        fail(str(exc))
        code = EXIT_UNAVAILABLE
    sys.exit(code)


def operator_command(
    command: Callable[Concatenate[Settings, P], Coroutine[Any, Any, int]],
) -> Callable[P, None]:
    """Make ``async def command(settings, **options) -> int`` the callback of a click command (see the module)."""

    @functools.wraps(command)
    def callback(ctx: click.Context, /, *args: P.args, **kwargs: P.kwargs) -> None:
        run_operator(ctx, lambda settings: command(settings, *args, **kwargs))

    return click.pass_context(callback)
