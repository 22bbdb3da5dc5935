"""``imaged submit``: publish one request to the request queue and, with ``--wait``, follow its events to the end.

The request comes from a JSON file and/or flags (flags win). With ``--wait`` the command subscribes to the events
exchange before it publishes, so no event can be missed, and exits 0 if the task completes, 1 if it fails or is
canceled, 2 if it gives up waiting (the task goes on).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aio_pika
import click

from ..broker import Topology, publish_request
from ..contract import Status, new_task_id
from ..settings import Settings
from .app import configure, load_settings, run_async
from .exits import EXIT_FAILED, EXIT_NOT_FINISHED, EXIT_OK


def build_request(
    file: Path | None, model: str | None, prompt: str | None, params: tuple[str, ...], task_id: str | None
) -> dict[str, Any]:
    """A request body from a JSON file and/or flags (flags win)."""
    body: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: not a JSON request body ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: a request body must be a JSON object")
        body = loaded
    parameters = dict(body.get("parameters") or {})
    if model:
        body["model"] = model
    if prompt:
        parameters["prompt"] = prompt
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    body["parameters"] = parameters
    if "model" not in body:
        raise ValueError("no model: give --model or a JSON file with a 'model' field")
    body["task_id"] = task_id or body.get("task_id") or new_task_id()
    return body


@click.command()
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
    configure(ctx, settings)
    try:
        body = build_request(file, model, prompt, params, task_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    sys.exit(run_async(submit_request(settings, body, wait=wait, wait_s=timeout, as_json=as_json)))


async def submit_request(
    settings: Settings, body: dict[str, Any], *, wait: bool, wait_s: float, as_json: bool
) -> int:
    topology = Topology.from_settings(settings)
    task_id = str(body["task_id"])
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        events: aio_pika.abc.AbstractQueue | None = None
        if wait:
            # Subscribe before publishing so no event can be missed.
            exchange = await channel.declare_exchange(
                topology.events, aio_pika.ExchangeType.TOPIC, durable=True
            )
            events = await channel.declare_queue(exclusive=True, auto_delete=True)
            await events.bind(exchange, routing_key="task.#")
        await publish_request(
            channel, topology, json.dumps(body, ensure_ascii=False).encode(), message_id=task_id
        )
        click.echo(f"submitted task {task_id}", err=True)
        if events is None:
            click.echo(task_id)
            return EXIT_OK
        try:
            return await asyncio.wait_for(_follow(events, task_id, as_json), wait_s)
        except TimeoutError:
            click.echo(
                f"gave up waiting after {wait_s:.0f}s; the task goes on (imaged status {task_id})", err=True
            )
            return EXIT_NOT_FINISHED
    finally:
        await connection.close()


async def _follow(queue: aio_pika.abc.AbstractQueue, task_id: str, as_json: bool) -> int:
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                if (message.headers or {}).get("task_id") != task_id:
                    continue
                event = json.loads(message.body)
                _show(event, as_json)
                status = Status(event["status"])
                if status.terminal:
                    return EXIT_OK if status is Status.COMPLETED else EXIT_FAILED
    return EXIT_FAILED


def _show(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event, ensure_ascii=False))
        return
    progress = float(event.get("progress") or 0.0)
    bar = "#" * int(progress * 20)
    line = f"{event['type']:<15} [{bar:<20}] {progress:4.0%}"
    if event.get("error"):
        err = event["error"]
        line += f"  {err['category']}: {err['message']}"
    if event.get("result"):
        for image in event["result"].get("images", []):
            line += f"\n  image {image['index']}: {image['local_path']} ({image['width']}x{image['height']})"
    click.echo(line, file=sys.stderr if not event.get("result") else sys.stdout)
