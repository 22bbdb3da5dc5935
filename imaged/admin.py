"""Operator commands behind the command line: task queries, ``check``, dead letters and API keys.

They talk to MongoDB and RabbitMQ directly (not through the HTTP API), print readable tables on a terminal or JSON
with ``--json``, and return the process exit code. No secret is ever printed: URLs show a masked password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import click
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from .auth import ApiKeys, Authenticator, amqp_user, is_loopback, is_valid_tenant, key_digest
from .broker import Topology
from .catalog import Catalog
from .contract import Status
from .diagnose import BROKER_ERRORS, DATABASE_ERRORS, broker_reason, database_reason, mask_url
from .errors import ConfigError
from .providers.registry import available_providers
from .settings import Settings
from .store import MongoTaskStore
from .task import Task
from .views import result_view, status_view

T = TypeVar("T")

# Exit codes. `check` exits with the code of the first failing check, in the order they are shown.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_FINISHED = 2
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_UNAVAILABLE = 6
EXIT_CHECK_CATALOG = 10
EXIT_CHECK_AUTH = 11
EXIT_CHECK_BROKER = 12
EXIT_CHECK_DATABASE = 13
EXIT_CHECK_IMAGE_DIR = 14
EXIT_CHECK_PROVIDER_KEYS = 15

CONNECT_TIMEOUT_S = 5.0
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


# -- output ---------------------------------------------------------------------------------------------------------


def redact(text: str, secrets_: Sequence[str | None]) -> str:
    for secret in secrets_:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), ensure_ascii=False, indent=2, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("\n", " ")


def echo_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, max_width: int = 60
) -> None:
    """A plain text table: ``columns`` are (key, heading)."""
    cells = [[_cell(row.get(key))[:max_width] for key, _ in columns] for row in rows]
    widths = [max([len(heading), *(len(r[i]) for r in cells)]) for i, (_, heading) in enumerate(columns)]
    click.echo("  ".join(h.upper().ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def echo_fields(fields: dict[str, Any]) -> None:
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        click.echo(
            f"{key.ljust(width)}  {_cell(value) if not isinstance(value, dict | list) else _json_cell(value)}"
        )


def _json_cell(value: Any) -> str:
    return json.dumps(_plain(value), ensure_ascii=False)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


# -- connections ----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[MongoTaskStore]:
    store = MongoTaskStore.connect(
        settings.mongodb_url.get_secret_value(), settings.mongodb_db, timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
    )
    try:
        yield store
    finally:
        await store.close()


class Unavailable(Exception):
    """A backing service could not be reached; the message is safe to print."""


async def _guard(settings: Settings, coro: Awaitable[T]) -> T:
    """Run a database/broker operation, turning an outage into a printable :class:`Unavailable`."""
    try:
        return await coro
    except PyMongoError as exc:
        raise Unavailable(
            f"database {mask_url(settings.mongodb_url.get_secret_value())} unavailable: {type(exc).__name__}"
        ) from None


# -- tasks ----------------------------------------------------------------------------------------------------------


async def _get_task(settings: Settings, task_id: str) -> Task | None:
    async with open_store(settings) as store:
        return await _guard(settings, store.get(task_id))


async def show_status(settings: Settings, task_id: str, as_json: bool) -> int:
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


async def show_result(settings: Settings, task_id: str, as_json: bool) -> int:
    task = await _get_task(settings, task_id)
    if task is None:
        fail(f"no task {task_id}")
        return EXIT_NOT_FOUND
    view = result_view(task)
    status = task.status
    if as_json:
        echo_json(view)
    else:
        click.echo(f"task {task.id}: {status.value}")
        if view["error"]:
            err = view["error"]
            click.echo(f"error: {err.get('category')} ({err.get('code')}): {err.get('message')}")
        result = view["result"] or {}
        for image in result.get("images", []):
            click.echo(
                f"image {image.get('index')}: {image.get('local_path')} "
                f"({image.get('width')}x{image.get('height')}, {image.get('bytes')} bytes)"
            )
    if not status.terminal:
        return EXIT_NOT_FINISHED
    return EXIT_OK if status is Status.COMPLETED else EXIT_FAILED


async def list_tasks(
    settings: Settings, *, status: str | None, owner: str | None, limit: int, offset: int, as_json: bool
) -> int:
    async with open_store(settings) as store:
        tasks: list[Task] = await _guard(
            settings, store.list(owner=owner, status=status, limit=limit, skip=offset)
        )
        total: int = await _guard(settings, store.count(owner=owner, status=status))
    rows = [{**status_view(task), "owner": task.owner} for task in tasks]
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


async def cancel_task(settings: Settings, task_id: str, as_json: bool) -> int:
    async with open_store(settings) as store:
        task: Task | None = await _guard(settings, store.get(task_id))
        if task is None:
            fail(f"no task {task_id}")
            return EXIT_NOT_FOUND
        if task.terminal:
            fail(f"task {task_id} is already {task.status.value}: nothing to cancel")
            return EXIT_CONFLICT
        updated: Task | None = await _guard(settings, store.request_cancel(task_id))
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
    topology = Topology.from_settings(settings)
    try:
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=CONNECT_TIMEOUT_S)
    except (OSError, aio_pika.exceptions.AMQPError):
        click.echo("warning: broker unavailable; the daemon notices the cancel within a minute", err=True)
        return
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.control, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await exchange.publish(
            aio_pika.Message(json.dumps({"cancel": task_id}).encode(), content_type="application/json"),
            routing_key="",
        )
    finally:
        await connection.close()


# -- models ---------------------------------------------------------------------------------------------------------


async def provider_credentials(settings: Settings, catalog: Catalog) -> dict[str, bool | None]:
    """Per provider of the catalog: whether it has credentials; None when no such provider is installed."""
    classes = available_providers()
    found: dict[str, bool | None] = {}
    async with aiohttp.ClientSession() as session:
        for name in catalog.providers():
            cls = classes.get(name)
            found[name] = None if cls is None else bool(cls(settings, session).credentials())
    return found


async def list_models(settings: Settings, as_json: bool) -> int:
    try:
        catalog = Catalog.load(settings.catalog_path)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_CONFIG
    configured = await provider_credentials(settings, catalog)
    rows = [
        {
            "name": spec.name,
            "provider": spec.provider,
            "kind": spec.kind,
            "title": spec.title,
            "price_per_image": spec.price_per_image,
            "currency": spec.currency,
            "configured": bool(configured.get(spec.provider)),
            "defaults": spec.defaults,
            "limits": spec.limits,
        }
        for spec in sorted(catalog.models.values(), key=lambda s: (s.provider, s.name))
    ]
    if as_json:
        echo_json(rows)
        return EXIT_OK
    for row in rows:
        row["price"] = f"{row['price_per_image']:g} {row['currency']}"
        row["keys"] = "yes" if row["configured"] else "no"
    echo_table(
        rows,
        [
            ("name", "model"),
            ("provider", "provider"),
            ("kind", "kind"),
            ("price", "price/image"),
            ("keys", "keys"),
        ],
    )
    return EXIT_OK


# -- check ----------------------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str
    exit_code: int = EXIT_OK
    #: passes, but deserves attention (shown as WARN; does not change the exit code)
    warning: bool = False


PROVIDER_KEY_HINTS = {
    "aliyun": "set IMAGED_ALIYUN_API_KEY",
    "liblibai": "set IMAGED_LIBLIBAI_ACCESS_KEY and IMAGED_LIBLIBAI_SECRET_KEY",
}


def _secrets(settings: Settings) -> list[str | None]:
    """Every secret value of the settings, to scrub from any message that might echo one."""
    values: list[str | None] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            values.append(value.get_secret_value())
    for url_field in (settings.amqp_url, settings.mongodb_url):
        parts = url_field.get_secret_value().partition("://")[2].partition("/")[0]
        if "@" in parts:
            values.append(parts.rpartition("@")[0].partition(":")[2] or None)
    return values


async def _check_broker(settings: Settings, topology: Topology) -> CheckResult:
    url = settings.amqp_url.get_secret_value()
    shown = mask_url(url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
    except BROKER_ERRORS as exc:
        reason = redact(broker_reason(exc), _secrets(settings))
        return CheckResult("broker", False, f"cannot connect to {shown}: {reason}", EXIT_CHECK_BROKER)
    try:
        notes = []
        for queue in (topology.requests, topology.dead):
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                count = declared.declaration_result.message_count
                notes.append(f"{queue}: {count} message(s)")
            except aio_pika.exceptions.ChannelClosed:
                notes.append(f"{queue}: not declared yet (`imaged setup` or the daemon declares it)")
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()
    return CheckResult("broker", True, f"{shown} connected; " + "; ".join(notes))


async def _check_database(settings: Settings) -> tuple[CheckResult, int | None]:
    url = settings.mongodb_url.get_secret_value()
    shown = mask_url(url)
    client: AsyncMongoClient[dict[str, Any]] | None = None
    try:
        client = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=int(CONNECT_TIMEOUT_S * 1000),
            connectTimeoutMS=int(CONNECT_TIMEOUT_S * 1000),
        )
        db = client[settings.mongodb_db]
        await db.command("ping")
        tasks = await db["tasks"].estimated_document_count()
        keys = await ApiKeys(db["api_keys"]).count_active()
    except DATABASE_ERRORS as exc:
        reason = redact(database_reason(exc, CONNECT_TIMEOUT_S), _secrets(settings))
        return CheckResult("database", False, f"cannot reach {shown}: {reason}", EXIT_CHECK_DATABASE), None
    finally:
        if client is not None:
            await client.close()
    message = f"{shown} reachable; database {settings.mongodb_db}: {tasks} task(s), {keys} active API key(s)"
    return CheckResult("database", True, message), keys


def _check_amqp_user(settings: Settings) -> CheckResult:
    """A task belongs to the AMQP user that published it: a login shared by every service shares their tasks."""
    user = amqp_user(settings.amqp_url.get_secret_value())
    if user != "guest":
        return CheckResult("amqp user", True, f"the daemon logs in as {user!r}")
    return CheckResult(
        "amqp user",
        True,
        "the daemon uses RabbitMQ's default user 'guest': publishers that share a login cannot be told apart "
        "(their tasks share one owner, and any of them may name another's task ids); give the daemon and each "
        "publishing service a user of its own, and set user_id on requests (README: Security)",
        warning=True,
    )


def _check_image_dir(path: Path) -> CheckResult:
    target = path
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir():
        return CheckResult("image dir", False, f"{path}: {target} is not a directory", EXIT_CHECK_IMAGE_DIR)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".imaged-check-"):
            pass
    except OSError as exc:
        return CheckResult(
            "image dir", False, f"{path}: cannot write in {target}: {exc.strerror}", EXIT_CHECK_IMAGE_DIR
        )
    note = "writable" if target == path else f"will be created (in writable {target})"
    return CheckResult("image dir", True, f"{path.resolve()} {note}")


async def run_checks(settings: Settings) -> list[CheckResult]:
    topology = Topology.from_settings(settings)
    results: list[CheckResult] = []
    results.append(
        CheckResult(
            "configuration",
            True,
            f"queues {topology.prefix}.*, database {settings.mongodb_db}, "
            f"HTTP {settings.http_host}:{settings.http_port}",
        )
    )
    catalog: Catalog | None
    try:
        catalog = Catalog.load(settings.catalog_path)
        results.append(
            CheckResult(
                "catalog", True, f"{len(catalog.models)} models; providers {', '.join(catalog.providers())}"
            )
        )
    except ConfigError as exc:
        catalog = None
        results.append(CheckResult("catalog", False, str(exc), EXIT_CHECK_CATALOG))
    auth: Authenticator | None
    try:
        auth = Authenticator(settings, None)
        auth_result = CheckResult("auth", True, "")
    except ConfigError as exc:
        auth = None
        auth_result = CheckResult("auth", False, redact(str(exc), _secrets(settings)), EXIT_CHECK_AUTH)
    results.append(auth_result)
    results.append(await _check_broker(settings, topology))
    results.append(_check_amqp_user(settings))
    database, db_keys = await _check_database(settings)
    results.append(database)
    results.append(await asyncio.to_thread(_check_image_dir, settings.image_dir))
    if catalog is not None:
        configured = await provider_credentials(settings, catalog)
        missing = [
            f"{name}: not installed"
            if has is None
            else f"{name}: no credentials ({PROVIDER_KEY_HINTS.get(name, 'see its docs')})"
            for name, has in configured.items()
            if not has
        ]
        if missing:
            results.append(CheckResult("provider keys", False, "; ".join(missing), EXIT_CHECK_PROVIDER_KEYS))
        else:
            results.append(CheckResult("provider keys", True, f"present for {', '.join(configured)}"))
    if auth is not None:
        settings_auth = auth.configured_in_settings
        if settings_auth:
            auth_result.message = auth.describe().removeprefix("on: ")
        elif db_keys:
            auth_result.message = f"{db_keys} API key(s) in the database"
        elif db_keys is None:
            auth_result.message = (
                "no API keys or JWT in the settings (database keys unknown: database unreachable)"
            )
        elif is_loopback(settings.http_host):
            auth_result.message = "open: no API keys and no JWT configured (allowed: HTTP on loopback only)"
        else:
            auth_result.ok = False
            auth_result.exit_code = EXIT_CHECK_AUTH
            auth_result.message = (
                f"open: no API keys and no JWT configured, but IMAGED_HTTP_HOST={settings.http_host} is not "
                "loopback: the daemon refuses to start so"
            )
    return results


async def check(settings: Settings, as_json: bool) -> int:
    for noisy in ("aiormq", "aio_pika", "pymongo"):  # their own reports of a failed connect; ours say it
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    results = await run_checks(settings)
    failures = [r for r in results if not r.ok]
    code = failures[0].exit_code if failures else EXIT_OK
    if as_json:
        echo_json({"ok": not failures, "exit_code": code, "checks": [r.__dict__ for r in results]})
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            label = "FAIL" if not r.ok else "WARN" if r.warning else "ok  "
            click.echo(f"{label}  {r.name.ljust(width)}  {r.message}")
        if failures:
            click.echo(f"{len(failures)} check(s) failed (exit code {code})", err=True)
    return code


# -- dead letters ---------------------------------------------------------------------------------------------------


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
        "x_death": _plain(deaths) if deaths is not None else None,
        "body_bytes": len(body),
        "body": body[:500].decode("utf-8", "replace"),
    }


@contextlib.asynccontextmanager
async def _dead_channel(
    settings: Settings,
) -> AsyncIterator[tuple[AbstractChannel, aio_pika.abc.AbstractQueue]]:
    topology = Topology.from_settings(settings)
    try:
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=CONNECT_TIMEOUT_S)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        raise Unavailable(
            f"broker {mask_url(settings.amqp_url.get_secret_value())} unavailable: {type(exc).__name__}"
        ) from None
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


async def dead_list(settings: Settings, limit: int, as_json: bool) -> int:
    """Show dead letters without removing them: get each unacked, then let the channel close hand them back."""
    views = []
    async with _dead_channel(settings) as (_, queue):
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


def _valid_target(queue: str | None, topology: Topology) -> bool:
    return queue is not None and (queue == topology.requests or queue.startswith(f"{topology.prefix}.work."))


async def dead_replay(
    settings: Settings, message_ids: Sequence[str], replay_all: bool, limit: int, as_json: bool
) -> int:
    """Publish selected dead letters back to their queues; each is acked only after the broker confirmed it."""
    topology = Topology.from_settings(settings)
    me = amqp_user(settings.amqp_url.get_secret_value())
    wanted = set(message_ids)
    replayed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    async with _dead_channel(settings) as (channel, queue):
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
                aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
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


# -- API keys -------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _api_keys(settings: Settings) -> AsyncIterator[ApiKeys]:
    async with open_store(settings) as store:
        yield ApiKeys(store.db["api_keys"])


def _pepper(settings: Settings) -> str | None:
    return settings.api_key_pepper.get_secret_value() if settings.api_key_pepper else None


async def keys_add(settings: Settings, tenant: str, label: str, as_json: bool) -> int:
    if not is_valid_tenant(tenant):
        fail(f"tenant {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . @ : -")
        return EXIT_CONFIG
    async with _api_keys(settings) as keys:
        key_id, key = await _guard(settings, keys.add(tenant, label=label, pepper=_pepper(settings)))
    if as_json:
        echo_json({"key_id": key_id, "tenant": tenant, "label": label, "key": key})
    else:
        click.echo(f"API key {key_id} for tenant {tenant} (shown once; store it now):", err=True)
        click.echo(key)
    return EXIT_OK


async def keys_list(settings: Settings, include_revoked: bool, as_json: bool) -> int:
    async with _api_keys(settings) as keys:
        rows: list[dict[str, Any]] = await _guard(settings, keys.list(include_revoked=include_revoked))
    if as_json:
        echo_json(rows)
        return EXIT_OK
    if not rows:
        click.echo("no API keys in the database")
        return EXIT_OK
    for row in rows:
        row["state"] = "revoked" if row["revoked_at"] else "active"
    echo_table(
        rows,
        [
            ("key_id", "key id"),
            ("tenant", "tenant"),
            ("label", "label"),
            ("state", "state"),
            ("created_at", "created"),
            ("revoked_at", "revoked"),
        ],
    )
    return EXIT_OK


async def keys_revoke(settings: Settings, key_id: str, as_json: bool) -> int:
    async with _api_keys(settings) as keys:
        done: bool = await _guard(settings, keys.revoke(key_id))
    if as_json:
        echo_json({"key_id": key_id, "revoked": done})
    elif done:
        click.echo(f"revoked API key {key_id}")
    if not done:
        fail(f"no active API key {key_id}")
        return EXIT_NOT_FOUND
    return EXIT_OK


def keys_hash(settings: Settings, key: str) -> str:
    """The digest to put in IMAGED_API_KEYS for a key (with the configured pepper, if any)."""
    return key_digest(key, _pepper(settings))
