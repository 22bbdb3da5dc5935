"""``imaged webhooks list`` and ``imaged webhooks replay``: a task's webhook attempts, and delivering again.

``list`` reads the attempts from MongoDB (``webhook_attempts``); ``replay`` puts deliveries back on
``<prefix>.webhooks`` for the daemon to make, with the same body and ``webhook-id`` as before. Neither prints a
secret: attempts are stored with URLs redacted, and the signing secret is never read back.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigError
from ..settings import Settings
from .app import Unavailable, json_option, operator_command
from .exits import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_OK
from .output import echo_json, echo_table, fail
from .services import guard, open_store

# imaged.webhooks (aiohttp, the dispatcher) is imported by the commands, not by every start of `imaged`.


@click.group()
def webhooks() -> None:
    """Webhook deliveries of a task: the attempts made, or deliver its events again."""


@webhooks.command("list")
@click.argument("task_id")
@json_option
@operator_command
async def webhooks_list(settings: Settings, task_id: str, as_json: bool) -> int:
    """Show every delivery attempt of a task's events (exit 4 if there is no such task)."""
    from ..redact import Redactor
    from ..webhooks.attempts import AttemptLog

    async with open_store(settings) as store:
        rows = await guard(settings, AttemptLog(store.db, Redactor()).for_task(task_id))
        if not rows and await guard(settings, store.get(task_id)) is None:
            fail(f"no task {task_id}")
            return EXIT_NOT_FOUND
    if as_json:
        echo_json(rows)
        return EXIT_OK
    if not rows:
        click.echo(f"no webhook attempts for task {task_id}")
        return EXIT_OK
    for row in rows:
        row["answer"] = row.get("status") if row.get("status") is not None else row.get("error")
    echo_table(
        rows,
        [
            ("event_id", "event"),
            ("event", "type"),
            ("attempt", "attempt"),
            ("at", "at"),
            ("outcome", "outcome"),
            ("answer", "status/error"),
            ("latency_ms", "ms"),
            ("url", "url"),
        ],
    )
    return EXIT_OK


@webhooks.command("replay")
@click.argument("task_id")
@click.option("--event", "event_id", help="only this event (its event_id, as `webhooks list` shows it)")
@json_option
@operator_command
async def webhooks_replay(settings: Settings, task_id: str, event_id: str | None, as_json: bool) -> int:
    """Deliver a task's events again (the last attempted delivery of each, or of one); exit 4 if none."""
    import aio_pika

    from ..broker import Topology
    from ..diagnose import mask_url
    from ..redact import Redactor
    from ..webhooks import WebhookDispatcher, load_webhook_settings

    try:
        webhook_settings = load_webhook_settings()
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_CONFIG
    url = settings.amqp_url.get_secret_value()
    async with open_store(settings) as store:
        dispatcher = WebhookDispatcher(
            webhook_settings,
            url,
            Topology.from_settings(settings),
            store.db,
            None,
            Redactor.from_models([settings, webhook_settings]),
        )
        try:
            try:
                await guard(settings, dispatcher.open())
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                raise Unavailable(f"broker {mask_url(url)} unavailable: {type(exc).__name__}") from None
            replayed = await guard(settings, dispatcher.replay(task_id, event_id))
        finally:
            await dispatcher.close()
    result: dict[str, Any] = {"task_id": task_id, "event_id": event_id, "replayed": replayed}
    if as_json:
        echo_json(result)
    elif replayed:
        click.echo(f"{replayed} deliver{'y' if replayed == 1 else 'ies'} of task {task_id} queued again")
    if not replayed:
        fail(
            f"nothing to replay: no webhook attempt of task {task_id}"
            + (f" for event {event_id}" if event_id else "")
        )
        return EXIT_NOT_FOUND
    return EXIT_OK
