"""``imaged models``: the model catalog, and which providers have credentials here (``imaged check`` asks too)."""

from __future__ import annotations

import click

from ..catalog import Catalog
from ..errors import ConfigError
from ..settings import Settings
from ..views import model_view
from .app import json_option, operator_command
from .exits import EXIT_CONFIG, EXIT_OK
from .output import echo_json, echo_table, fail

#: the fields of ``imaged models --json``, in this order; "configured" is the view's "available"
FIELDS = (
    "name",
    "provider",
    "family",
    "kind",
    "title",
    "aliases",
    "sizes",
    "accepts",
    "price",
    "price_per_image",
    "currency",
    "configured",
    "defaults",
    "limits",
)


async def provider_credentials(settings: Settings, catalog: Catalog) -> dict[str, bool | None]:
    """Per provider of the catalog: whether it has credentials; None when no such provider is installed."""
    from ..providers.registry import load_provider_settings, providers_with_credentials

    loaded = load_provider_settings()
    keyed = await providers_with_credentials(loaded)
    return {name: None if name not in loaded else name in keyed for name in catalog.providers()}


@click.command()
@json_option
@operator_command
async def models(settings: Settings, as_json: bool) -> int:
    """List the model catalog and whether each provider has credentials."""
    try:
        catalog = Catalog.load(settings.catalog_path)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_CONFIG
    try:
        configured = await provider_credentials(settings, catalog)
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_CONFIG
    views = model_view(catalog, [name for name, has in configured.items() if has])
    rows = [
        {field: view["available" if field == "configured" else field] for field in FIELDS} for view in views
    ]
    if as_json:
        echo_json(rows)
        return EXIT_OK
    for row, spec in zip(
        rows, sorted(catalog.models.values(), key=lambda s: (s.provider, s.name)), strict=True
    ):
        row["price"] = spec.price.describe()
        row["images"] = "-".join(map(str, sorted(set(spec.accepts.n))))
        row["keys"] = "yes" if row["configured"] else "no"
    echo_table(
        rows,
        [
            ("name", "model"),
            ("provider", "provider"),
            ("family", "family"),
            ("kind", "kind"),
            ("sizes", "sizes"),
            ("images", "n"),
            ("price", "price"),
            ("keys", "keys"),
        ],
    )
    return EXIT_OK
