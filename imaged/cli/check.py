"""``imaged check``: configuration and connectivity, one line per check, never a secret.

The checks run in a fixed order (configuration, catalog, auth, broker, amqp user, database, images, webhooks,
providers, provider keys) and the command exits with the code of the first one that fails (``exits.py``: 10-15). A warning passes.
Reasons come from ``imaged/diagnose.py``, the same words ``imaged run`` uses when it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aio_pika
import click

from ..broker import Topology
from ..catalog import Catalog
from ..diagnose import BROKER_ERRORS, DATABASE_ERRORS, broker_reason, database_reason, mask_url
from ..errors import ConfigError, StorageError
from ..settings import Settings
from ..storage import open_image_store
from ..store import MongoTaskStore
from .app import json_option, operator_command
from .exits import (
    EXIT_CHECK_AUTH,
    EXIT_CHECK_BROKER,
    EXIT_CHECK_CATALOG,
    EXIT_CHECK_DATABASE,
    EXIT_CHECK_IMAGES,
    EXIT_CHECK_PROVIDER_KEYS,
    EXIT_CONFIG,
    EXIT_OK,
)
from .models import provider_credentials
from .output import echo_json, redact
from .services import CONNECT_TIMEOUT_S

# imaged.auth (JWT, cryptography) is imported by the functions that use it, not by every start of `imaged`.


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
    """Every secret value of the settings (and of the providers'), to scrub from any message that might echo one."""
    from ..providers.registry import load_provider_settings

    try:
        providers = list(load_provider_settings().values())
    except ConfigError:
        providers = []
    try:
        stores = open_image_store(settings).settings_models()
    except StorageError:
        stores = []
    values: list[str | None] = []
    for model in [settings, *providers, *stores]:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if hasattr(value, "get_secret_value"):
                values.append(value.get_secret_value())
            elif isinstance(value, list):
                values.extend(item.get_secret_value() for item in value if hasattr(item, "get_secret_value"))
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
    from ..auth import ApiKeys

    url = settings.mongodb_url.get_secret_value()
    shown = mask_url(url)
    store: MongoTaskStore | None = None
    try:
        store = MongoTaskStore.connect(url, settings.mongodb_db, timeout_ms=int(CONNECT_TIMEOUT_S * 1000))
        await store.ping()
        tasks = await store.tasks.estimated_document_count()
        keys = await ApiKeys(store.db["api_keys"]).count_active()
    except DATABASE_ERRORS as exc:
        reason = redact(database_reason(exc, CONNECT_TIMEOUT_S), _secrets(settings))
        return CheckResult("database", False, f"cannot reach {shown}: {reason}", EXIT_CHECK_DATABASE), None
    finally:
        if store is not None:
            await store.close()
    message = f"{shown} reachable; database {settings.mongodb_db}: {tasks} task(s), {keys} active API key(s)"
    return CheckResult("database", True, message), keys


def _check_amqp_user(settings: Settings) -> CheckResult:
    """A task belongs to the AMQP user that published it: a login shared by every service shares their tasks."""
    from ..auth import amqp_user

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


async def _check_images(settings: Settings) -> CheckResult:
    """The image store can be written (and read back and deleted, for a bucket)."""
    try:
        store = open_image_store(settings)
        await store.start()
        try:
            return CheckResult("images", True, await store.check())
        finally:
            await store.close()
    except StorageError as exc:
        return CheckResult("images", False, redact(str(exc), _secrets(settings)), EXIT_CHECK_IMAGES)


def _check_provider_settings() -> CheckResult:
    """Every installed provider's own settings (``IMAGED_<NAME>_*``), valid, and listed without secrets."""
    from ..providers.registry import load_provider_settings

    try:
        loaded = load_provider_settings()
    except ConfigError as exc:
        return CheckResult("providers", False, str(exc), EXIT_CONFIG)
    shown = "; ".join(
        f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.public().items())
        for name, values in sorted(loaded.items())
    )
    return CheckResult("providers", True, shown)


def _check_webhooks() -> CheckResult:
    """Webhook settings (``IMAGED_WEBHOOK_*``) valid; whether deliveries are on, and where they may go."""
    from ..webhooks import load_webhook_settings

    try:
        hooks = load_webhook_settings()
    except ConfigError as exc:
        return CheckResult("webhooks", False, str(exc), EXIT_CONFIG)
    if hooks.secret is None:
        return CheckResult(
            "webhooks", True, "off (no IMAGED_WEBHOOK_SECRET: requests naming a webhook are refused)"
        )
    tenants = f"; default URLs for {len(hooks.tenant_urls)} tenant(s)" if hooks.tenant_urls else ""
    return CheckResult(
        "webhooks",
        True,
        f"signed; retried for {hooks.retry_s:g} s; to {hooks.policy().describe()}{tenants}",
    )


async def _check_provider_keys(settings: Settings, catalog: Catalog) -> CheckResult:
    configured = await provider_credentials(settings, catalog)
    missing = [
        f"{name}: not installed"
        if has is None
        else f"{name}: no credentials ({PROVIDER_KEY_HINTS.get(name, 'see its docs')})"
        for name, has in configured.items()
        if not has
    ]
    if missing:
        return CheckResult("provider keys", False, "; ".join(missing), EXIT_CHECK_PROVIDER_KEYS)
    return CheckResult("provider keys", True, f"present for {', '.join(configured)}")


async def run_checks(settings: Settings) -> list[CheckResult]:
    from ..auth import Authenticator, is_loopback

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
    results.append(await _check_images(settings))
    results.append(_check_webhooks())
    results.append(_check_provider_settings())
    if catalog is not None and results[-1].ok:
        results.append(await _check_provider_keys(settings, catalog))
    # The auth line is written last: whether an open API is allowed depends on the keys the database holds.
    if auth is not None:
        if auth.configured_in_settings:
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


@click.command()
@json_option
@operator_command
async def check(settings: Settings, as_json: bool) -> int:
    """Check configuration and connectivity; no secret is printed.

    \b
    Exit codes (the first failing check wins):
      3 settings invalid   10 catalog   11 authentication   12 broker
      13 database          14 image store                    15 provider keys missing
    """
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
