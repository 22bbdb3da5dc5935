"""``imaged status``, ``result``, ``tasks`` and ``cancel``: tasks as the store holds them, in the API's views.

They read MongoDB directly. ``cancel`` sets the task's flag in the store and then broadcasts the task id on the
control exchange, so that the replica driving it stops at once (see ``imaged/cancels.py``).
"""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import click

from ..broker import Topology
from ..contract import Status
from ..errors import StorageError
from ..settings import Settings
from ..storage import open_image_store
from ..task import Task
from ..views import result_view, status_view, with_fresh_links
from .app import Unavailable, json_option, operator_command
from .exits import EXIT_CONFLICT, EXIT_FAILED, EXIT_NOT_FINISHED, EXIT_NOT_FOUND, EXIT_OK
from .output import echo_fields, echo_json, echo_table, fail
from .services import connect_broker, guard, open_store


async def _with_links(settings: Settings, view: dict[str, Any]) -> dict[str, Any]:
    """The result view with fresh download links (presigned links expire); as stored when the store is away."""
    try:
        store = open_image_store(settings)
        await store.start()
    except (StorageError, OSError) as exc:
        click.echo(f"warning: image store unavailable, links as stored: {exc}", err=True)
        return view
    try:
        return await with_fresh_links(view, store.link)
    finally:
        await store.close()


async def _get_task(settings: Settings, task_id: str) -> Task | None:
    async with open_store(settings) as store:
        return await guard(settings, store.get(task_id))


@click.command()
@click.argument("task_id")
@json_option
@operator_command
async def status(settings: Settings, task_id: str, as_json: bool) -> int:
    """Show a task's status (exit 4 if there is no such task)."""
    task = await _get_task(settings, task_id)
    if task is None:
        fail(f"no task {task_id}")
        return EXIT_NOT_FOUND
    view = status_view(task)
    view["owner"] = task.owner
    if as_json:
        echo_json(view)
    else:
        echo_fields(view)
    return EXIT_OK


@click.command()
@click.argument("task_id")
@json_option
@operator_command
async def result(settings: Settings, task_id: str, as_json: bool) -> int:
    """Show a task's result: exit 0 completed, 1 failed or canceled, 2 not finished, 4 no such task."""
    task = await _get_task(settings, task_id)
    if task is None:
        fail(f"no task {task_id}")
        return EXIT_NOT_FOUND
    view = await _with_links(settings, result_view(task))
    if as_json:
        echo_json(view)
    else:
        click.echo(f"task {task.id}: {task.status.value}")
        if view["error"]:
            err = view["error"]
            click.echo(f"error: {err.get('category')} ({err.get('code')}): {err.get('message')}")
        for image in (view["result"] or {}).get("images", []):
            where = image.get("local_path") or image.get("storage_url")
            click.echo(
                f"image {image.get('index')}: {where} "
                f"({image.get('width')}x{image.get('height')}, {image.get('bytes')} bytes)"
            )
            if image.get("download_url"):
                click.echo(f"  download: {image['download_url']}")
    if not task.status.terminal:
        return EXIT_NOT_FINISHED
    return EXIT_OK if task.status is Status.COMPLETED else EXIT_FAILED


@click.command()
@click.option(
    "--status", "status_", type=click.Choice([s.value for s in Status]), help="only tasks in this status"
)
@click.option("--owner", help="only this tenant's tasks")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
@operator_command
async def tasks(
    settings: Settings, status_: str | None, owner: str | None, limit: int, offset: int, as_json: bool
) -> int:
    """List tasks, newest first."""
    async with open_store(settings) as store:
        found = await guard(settings, store.list(owner=owner, status=status_, limit=limit, skip=offset))
        total = await guard(settings, store.count(owner=owner, status=status_))
    rows = [{**status_view(task), "owner": task.owner} for task in found]
    if as_json:
        echo_json({"tasks": rows, "total": total, "limit": limit, "offset": offset})
        return EXIT_OK
    if not rows:
        click.echo("no tasks")
        return EXIT_OK
    echo_table(
        rows,
        [
            ("task_id", "task"),
            ("status", "status"),
            ("model", "model"),
            ("provider", "provider"),
            ("owner", "owner"),
            ("progress", "progress"),
            ("created_at", "created"),
        ],
    )
    click.echo(f"{len(rows)} of {total} (offset {offset})", err=True)
    return EXIT_OK


@click.command()
@click.argument("task_id")
@json_option
@operator_command
async def cancel(settings: Settings, task_id: str, as_json: bool) -> int:
    """Ask the daemon to cancel a task (exit 4: no such task, 5: it has finished already)."""
    async with open_store(settings) as store:
        task = await guard(settings, store.get(task_id))
        if task is None:
            fail(f"no task {task_id}")
            return EXIT_NOT_FOUND
        if task.terminal:
            fail(f"task {task_id} is already {task.status.value}: nothing to cancel")
            return EXIT_CONFLICT
        updated = await guard(settings, store.request_cancel(task_id))
    if updated is None:
        fail(f"no task {task_id}")
        return EXIT_NOT_FOUND
    await _broadcast_cancel(settings, task_id)
    if as_json:
        echo_json(status_view(updated))
    else:
        click.echo(
            f"cancel requested for task {task_id} (status {updated.status.value}); the daemon ends it shortly"
        )
    return EXIT_OK


async def _broadcast_cancel(settings: Settings, task_id: str) -> None:
    """Tell the running job, wherever it is (the stored flag alone reaches it only within a minute)."""
    try:
        connection = await connect_broker(settings)
    except Unavailable:
        click.echo("warning: broker unavailable; the daemon notices the cancel within a minute", err=True)
        return
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            Topology.from_settings(settings).control, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await exchange.publish(
            aio_pika.Message(json.dumps({"cancel": task_id}).encode(), content_type="application/json"),
            routing_key="",
        )
    finally:
        await connection.close()
