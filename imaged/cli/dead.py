"""``imaged dead list`` and ``imaged dead replay``: the dead letters in ``<prefix>.dead``, for operators.

Both take messages from the queue without acknowledging them; a message not acknowledged goes back to the queue,
untouched, when the channel closes. ``list`` therefore leaves every dead letter in place, and ``replay`` removes
one only after the broker has confirmed its copy on the original queue. (The daemon's own consumer of dead
letters, ``<prefix>.dead.watch``, is ``imaged/deadletters.py``.)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aio_pika
import click
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from ..broker import Topology, persistent_message
from ..settings import Settings
from .app import Unavailable, json_option, operator_command, run_operator
from .exits import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK
from .output import echo_json, echo_table, plain
from .services import CONNECT_TIMEOUT_S, connect_broker

# imaged.auth (JWT, cryptography) is imported by the functions that use it, not by every start of `imaged`.

# Headers imaged or the broker put on a dead letter; a replay starts without them.
_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
    "x-imaged-reason",
    "x-imaged-error",
    "x-imaged-original-queue",
)


def _header_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def original_queue(headers: dict[str, Any]) -> str | None:
    """Where a dead letter came from: imaged's own header, else the broker's ``x-death``."""
    queue = _header_text(headers.get("x-imaged-original-queue"))
    if queue:
        return queue
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return _header_text(deaths[0].get("queue"))
    return None


def dead_view(index: int, message: AbstractIncomingMessage) -> dict[str, Any]:
    headers: dict[str, Any] = dict(message.headers or {})
    error_text = _header_text(headers.get("x-imaged-error"))
    error: Any = error_text
    if error_text:
        with contextlib.suppress(ValueError):
            error = json.loads(error_text)
    deaths = headers.get("x-death")
    body = message.body
    return {
        "index": index,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "reason": _header_text(headers.get("x-imaged-reason"))
        or (_header_text(deaths[0].get("reason")) if isinstance(deaths, list) and deaths else None),
        "error": error,
        "original_queue": original_queue(headers),
        "x_death": plain(deaths) if deaths is not None else None,
        "body_bytes": len(body),
        "body": body[:500].decode("utf-8", "replace"),
    }


@contextlib.asynccontextmanager
async def _dead_queue(settings: Settings) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue]]:
    topology = Topology.from_settings(settings)
    connection = await connect_broker(settings)
    try:
        channel = await connection.channel(publisher_confirms=True)
        try:
            queue = await channel.declare_queue(topology.dead, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            raise Unavailable(
                f"queue {topology.dead} does not exist (nothing was ever dead-lettered)"
            ) from None
        # Messages taken without an ack go back to the queue, untouched, when the channel closes.
        yield channel, queue
    finally:
        await connection.close()


@click.group()
def dead() -> None:
    """Dead letters in <prefix>.dead: list them, or replay them to their queue."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@operator_command
async def dead_list(settings: Settings, limit: int, as_json: bool) -> int:
    """Show dead letters with their reason and headers; they stay in the queue."""
    views = []
    async with _dead_queue(settings) as (_, queue):
        for index in range(limit):
            message = await queue.get(no_ack=False, fail=False, timeout=CONNECT_TIMEOUT_S)
            if message is None:
                break
            views.append(dead_view(index, message))
    if as_json:
        echo_json(views)
        return EXIT_OK
    if not views:
        click.echo("no dead letters")
        return EXIT_OK
    for view in views:
        err = view["error"]
        view["why"] = err.get("message") if isinstance(err, dict) else err
    echo_table(
        views,
        [
            ("index", "#"),
            ("message_id", "message id"),
            ("reason", "reason"),
            ("original_queue", "queue"),
            ("why", "error"),
        ],
    )
    return EXIT_OK


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
    if not message_ids and not replay_all:  # before the settings are read: a usage error comes first
        raise click.UsageError("name message ids to replay, or use --all")
    run_operator(ctx, lambda settings: replay(settings, message_ids, replay_all, limit, as_json))


def _valid_target(queue: str | None, topology: Topology) -> bool:
    return queue is not None and (queue == topology.requests or queue.startswith(f"{topology.prefix}.work."))


async def replay(
    settings: Settings, message_ids: Sequence[str], replay_all: bool, limit: int, as_json: bool
) -> int:
    """Publish selected dead letters back to their queues; each is acked only after the broker confirmed it."""
    from ..auth import amqp_user

    topology = Topology.from_settings(settings)
    me = amqp_user(settings.amqp_url.get_secret_value())
    wanted = set(message_ids)
    replayed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    async with _dead_queue(settings) as (channel, queue):
        for index in range(limit):
            message = await queue.get(no_ack=False, fail=False, timeout=CONNECT_TIMEOUT_S)
            if message is None:
                break
            if not replay_all and message.message_id not in wanted:
                continue  # stays unacked: back to the queue when the channel closes
            headers: dict[str, Any] = dict(message.headers or {})
            target = original_queue(headers)
            entry = {"index": index, "message_id": message.message_id, "queue": target}
            if not _valid_target(target, topology):
                skipped.append({**entry, "why": "no original queue of this namespace recorded"})
                continue
            assert target is not None
            for name in _DEATH_HEADERS:
                headers.pop(name, None)
            headers["x-imaged-replayed"] = int(headers.get("x-imaged-replayed") or 0) + 1
            await channel.default_exchange.publish(
                persistent_message(
                    message.body,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    reply_to=message.reply_to,
                    # RabbitMQ accepts only our own user id; anything else cannot be carried over.
                    user_id=message.user_id if message.user_id == me else None,
                    headers=headers,
                ),
                routing_key=target,
            )
            await message.ack()
            replayed.append(entry)
            wanted.discard(message.message_id or "")
    missing = sorted(wanted) if not replay_all else []
    if as_json:
        echo_json({"replayed": replayed, "skipped": skipped, "not_found": missing})
    else:
        for entry in replayed:
            click.echo(f"replayed {entry['message_id'] or '#' + str(entry['index'])} -> {entry['queue']}")
        for entry in skipped:
            click.echo(
                f"skipped {entry['message_id'] or '#' + str(entry['index'])}: {entry['why']}", err=True
            )
        for message_id in missing:
            click.echo(f"not found among the dead letters: {message_id}", err=True)
        click.echo(f"{len(replayed)} replayed, {len(skipped)} skipped, {len(missing)} not found", err=True)
    if skipped:
        return EXIT_FAILED
    return EXIT_NOT_FOUND if missing else EXIT_OK
