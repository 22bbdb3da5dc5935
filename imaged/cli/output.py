"""How the operator commands print: JSON for scripts (``--json``), plain tables and fields for a terminal.

Errors go to standard error as ``error: ...``; values are flattened the same way for both forms (datetimes,
bytes), so a table and its JSON always agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` with every one of ``secrets`` (of 3 characters or more) replaced by ``***``.

    For ``imaged check``'s one-line reasons, which quote what a driver said about a failed connection. Stricter
    about short values than :class:`imaged.redact.Redactor` (which ignores secrets under 6 characters so that
    ordinary words survive in logs): a 3-character password is hidden here too.
    """
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def plain(value: Any) -> Any:
    """``value`` with datetimes, bytes and tuples made JSON-friendly (recursively)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(plain(value), ensure_ascii=False, indent=2, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("\n", " ")


def _json_cell(value: Any) -> str:
    return json.dumps(plain(value), ensure_ascii=False)


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
    """One ``key  value`` line per field, keys aligned; dicts and lists as compact JSON."""
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        click.echo(
            f"{key.ljust(width)}  {_cell(value) if not isinstance(value, dict | list) else _json_cell(value)}"
        )


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
