"""``imaged schema``: the JSON Schemas of the message contract (``imaged/contract.py``), printed or written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..contract import json_schemas


@click.command()
@click.option(
    "--output", "-o", type=click.Path(file_okay=False, path_type=Path), help="write one file per schema"
)
def schema(output: Path | None) -> None:
    """Print (or write) the JSON Schemas of the request, event, result and error messages."""
    schemas = json_schemas()
    if output is None:
        click.echo(json.dumps(schemas, indent=2, ensure_ascii=False))
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, value in schemas.items():
        (output / f"{name}.schema.json").write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    click.echo(f"wrote {len(schemas)} schemas to {output}")
