"""``imaged keys add|list|revoke|hash``: the HTTP API's keys in MongoDB (``imaged/auth.py``: ApiKeys).

A key is printed once, when it is made; only its digest (HMAC-SHA256 with ``IMAGED_API_KEY_PEPPER`` if set) is
stored. ``hash`` prints the digest of a key for ``IMAGED_API_KEYS``, without a database.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import click

from ..settings import Settings
from .app import json_option, load_settings, operator_command
from .exits import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_OK
from .output import echo_json, echo_table, fail
from .services import guard, open_store

if TYPE_CHECKING:
    from ..auth import ApiKeys

# imaged.auth (JWT, cryptography) is imported by the commands that use it, not by every start of `imaged`.


@contextlib.asynccontextmanager
async def _api_keys(settings: Settings) -> AsyncIterator[ApiKeys]:
    from ..auth import ApiKeys

    async with open_store(settings) as store:
        yield ApiKeys(store.db["api_keys"])


def _pepper(settings: Settings) -> str | None:
    return settings.api_key_pepper.get_secret_value() if settings.api_key_pepper else None


@click.group()
def keys() -> None:
    """API keys of the HTTP API (stored in MongoDB as digests only)."""


@keys.command("add")
@click.argument("tenant")
@click.option("--label", default="", help="a note to tell keys apart")
@json_option
@operator_command
async def keys_add(settings: Settings, tenant: str, label: str, as_json: bool) -> int:
    """Create a key for TENANT and print it once (only its digest is stored)."""
    from ..auth import is_valid_tenant

    if not is_valid_tenant(tenant):
        fail(f"tenant {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . @ : -")
        return EXIT_CONFIG
    async with _api_keys(settings) as api_keys:
        key_id, key = await guard(settings, api_keys.add(tenant, label=label, pepper=_pepper(settings)))
    if as_json:
        echo_json({"key_id": key_id, "tenant": tenant, "label": label, "key": key})
    else:
        click.echo(f"API key {key_id} for tenant {tenant} (shown once; store it now):", err=True)
        click.echo(key)
    return EXIT_OK


@keys.command("list")
@click.option("--active", is_flag=True, help="leave out revoked keys")
@json_option
@operator_command
async def keys_list(settings: Settings, active: bool, as_json: bool) -> int:
    """List key ids, tenants and states (never the keys)."""
    async with _api_keys(settings) as api_keys:
        rows = await guard(settings, api_keys.list(include_revoked=not active))
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


@keys.command("revoke")
@click.argument("key_id")
@json_option
@operator_command
async def keys_revoke(settings: Settings, key_id: str, as_json: bool) -> int:
    """Revoke a key by its id (daemons stop accepting it within IMAGED_API_KEY_CACHE_S)."""
    async with _api_keys(settings) as api_keys:
        done = await guard(settings, api_keys.revoke(key_id))
    if as_json:
        echo_json({"key_id": key_id, "revoked": done})
    elif done:
        click.echo(f"revoked API key {key_id}")
    if not done:
        fail(f"no active API key {key_id}")
        return EXIT_NOT_FOUND
    return EXIT_OK


@keys.command("hash")
def keys_hash() -> None:
    """Read a key on standard input; print the digest to put in IMAGED_API_KEYS."""
    from ..auth import key_digest

    settings = load_settings()
    key = sys.stdin.readline().strip()
    if not key:
        raise click.UsageError("give the key on standard input")
    click.echo(key_digest(key, _pepper(settings)))
