"""The model catalog (``config/models.toml``): which provider serves a model, how, with which defaults and limits."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

SHIPPED_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.toml"
PACKAGED_CATALOG = Path(__file__).resolve().parent / "models.toml"


class ModelSpec(BaseModel):
    """One model of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str
    kind: Literal["text-to-image", "image-to-image", "image-edit", "custom"]
    title: str = ""
    endpoint: str = Field(description="API path the provider client posts to")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="what only the provider reads (a LiblibAI template, say); the provider checks it at start",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    price_per_image: float = 0.0
    currency: str = "CNY"


class Catalog:
    """Models by name."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(name)

    def providers(self) -> list[str]:
        return sorted({spec.provider for spec in self.models.values()})

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        if path is None:
            path = SHIPPED_CATALOG if SHIPPED_CATALOG.exists() else PACKAGED_CATALOG
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model catalog {path}: {exc}") from exc
        models: dict[str, ModelSpec] = {}
        for name, entry in raw.get("models", {}).items():
            try:
                models[name] = ModelSpec(name=name, **entry)
            except ValidationError as exc:
                raise ConfigError(f"model {name!r} in {path}: {exc}") from exc
        if not models:
            raise ConfigError(f"model catalog {path} lists no models")
        return cls(models)
