"""The model catalog (``config/models.toml``): which provider serves a model, through which protocol family, what
a request may ask of it (``accepts``), its defaults, and what it costs (``price``).

Adding a model of a family imaged already speaks is an edit of the catalog: validation is driven by ``accepts``
(sizes, prompt length, image count, input images), cost by ``price``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

SHIPPED_CATALOG = Path(__file__).resolve().parent.parent / "config" / "models.toml"
PACKAGED_CATALOG = Path(__file__).resolve().parent / "models.toml"

Kind = Literal["text-to-image", "image-to-image", "image-edit", "custom"]


def parse_size(text: str) -> tuple[int, int] | None:
    """``"W*H"`` as ``(W, H)``; None when it is not that."""
    width, sep, height = text.partition("*")
    if sep and width.isdigit() and height.isdigit() and len(width) <= 6 and len(height) <= 6:
        return int(width), int(height)
    return None


def _ratio(value: float) -> str:
    """``0.25`` as ``1:4``, ``4.0`` as ``4:1``."""
    return f"1:{1 / value:g}" if value < 1 else f"{value:g}:1"


class SizeRule(BaseModel):
    """How a model's output size may be asked for. ``sides``, ``pixels`` and ``ratio`` combine (all must hold);
    ``choices`` is a fixed list; ``tiers`` are names for sizes (``"1K"``) a request may use instead of W*H."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sides: tuple[int, int] | None = Field(None, description="each of width and height in [min, max]")
    pixels: tuple[int, int] | None = Field(None, description="width × height in [min, max]")
    ratio: tuple[float, float] | None = Field(None, description="width / height in [min, max]")
    choices: tuple[str, ...] = Field((), description='the only sizes, as "W*H"')
    tiers: dict[str, str] = Field(default_factory=dict, description='named sizes: "1K" = "1280*1280"')

    @model_validator(mode="after")
    def _consistent(self) -> SizeRule:
        for choice in (*self.choices, *self.tiers.values()):
            if parse_size(choice) is None:
                raise ValueError(f'size {choice!r} is not "W*H"')
        if not (self.sides or self.pixels or self.choices or self.tiers):
            raise ValueError("a size rule needs sides, pixels, choices or tiers")
        return self

    def problem(self, width: int, height: int) -> str | None:
        """Why ``width × height`` is not allowed (naming the limit), or None."""
        if self.choices:
            if f"{width}*{height}" not in self.choices:
                return f"must be one of {', '.join(self.choices)}"
            return None
        if self.sides and not all(self.sides[0] <= side <= self.sides[1] for side in (width, height)):
            return f"each side must be {self.sides[0]}..{self.sides[1]}"
        if self.pixels and not self.pixels[0] <= width * height <= self.pixels[1]:
            return f"width × height must be {self.pixels[0]:,}..{self.pixels[1]:,} pixels (got {width * height:,})"
        if self.ratio and not self.ratio[0] <= width / max(height, 1) <= self.ratio[1]:
            return f"width / height must be {_ratio(self.ratio[0])} to {_ratio(self.ratio[1])}"
        if not (self.sides or self.pixels) and self.tiers:
            return f"must be one of {', '.join(self.tiers)}"
        return None

    def text_problem(self, size: str) -> str | None:
        """Why a ``"W*H"`` size (or a tier name) is not allowed, or None."""
        if size in self.tiers:
            return None
        parsed = parse_size(size)
        return "must be 'W*H'" if parsed is None else self.problem(*parsed)

    def largest_side(self) -> int:
        """The longest side a size within this rule can have."""
        sides = [max(size) for text in (*self.choices, *self.tiers.values()) if (size := parse_size(text))]
        if self.sides:
            sides.append(self.sides[1])
        elif self.pixels:
            stretch = max(self.ratio[1], 1 / self.ratio[0]) if self.ratio else 1.0
            sides.append(int((self.pixels[1] * stretch) ** 0.5))
        return max(sides, default=0)

    def describe(self) -> str:
        """The rule in words (``imaged models``, the README's model table)."""
        if self.choices:
            return " | ".join(self.choices)
        parts = []
        if self.sides:
            parts.append(f"sides {self.sides[0]}..{self.sides[1]}")
        if self.pixels:
            parts.append(f"{self.pixels[0]:,}..{self.pixels[1]:,} px")
        if self.ratio:
            parts.append(f"ratio {_ratio(self.ratio[0])}..{_ratio(self.ratio[1])}")
        if self.tiers:
            parts.append(" | ".join(self.tiers))
        return ", ".join(parts)


class Accepts(BaseModel):
    """What a request may ask of a model; the provider's parameter checks read their limits from here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: int = Field(2000, ge=1, description="characters of the prompt at most")
    negative_prompt: int | None = Field(None, ge=1, description="characters of the negative prompt at most")
    n: tuple[int, int] = Field((1, 4), description="images per task")
    size: SizeRule | None = None
    images: tuple[int, int] | None = Field(
        None, description="input images (URLs): [min, max]; none taken if unset"
    )

    @model_validator(mode="after")
    def _ranges(self) -> Accepts:
        for name in ("n", "images"):
            pair = getattr(self, name)
            if pair is not None and not 0 <= pair[0] <= pair[1]:
                raise ValueError(f"{name} must be [min, max] with 0 <= min <= max")
        return self


class Price(BaseModel):
    """What a task costs: per delivered image, per image by size tier, or per provider point (LiblibAI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_image: float = Field(0.0, ge=0)
    tiers: dict[str, float] = Field(default_factory=dict, description="price per image by size tier")
    tier_pixels: dict[str, int] = Field(
        default_factory=dict, description="the largest width × height of each tier (smallest first)"
    )
    per_point: float | None = Field(None, ge=0, description="price of one provider point (pointsCost)")
    currency: str = "CNY"

    @model_validator(mode="after")
    def _tiers(self) -> Price:
        if set(self.tiers) != set(self.tier_pixels):
            raise ValueError("tiers and tier_pixels must name the same tiers")
        return self

    @property
    def basis(self) -> str:
        if self.per_point is not None:
            return "points"
        return "size tier" if self.tiers else "image"

    def tier_of(self, width: int, height: int) -> str | None:
        """The smallest tier that holds ``width × height`` (the largest tier for anything bigger)."""
        ordered = sorted(self.tier_pixels.items(), key=lambda item: item[1])
        for tier, pixels in ordered:
            if width * height <= pixels:
                return tier
        return ordered[-1][0] if ordered else None

    def cost(self, images: int, size: tuple[int, int] | None, points: float | None) -> float:
        """The cost of a task that delivered ``images`` of ``size`` (provider ``points`` when billed so)."""
        if self.per_point is not None:
            return round((points or 0.0) * self.per_point, 6)
        if self.tiers and size is not None:
            tier = self.tier_of(*size)
            if tier is not None:
                return round(self.tiers[tier] * images, 6)
        return round(self.per_image * images, 6)

    def describe(self) -> str:
        if self.per_point is not None:
            return f"{self.per_point:g} {self.currency} per point"
        if self.tiers:
            return (
                ", ".join(f"{tier} {price:g}" for tier, price in self.tiers.items())
                + f" {self.currency}/image"
            )
        return f"{self.per_image:g} {self.currency}/image"


class ModelSpec(BaseModel):
    """One model of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str
    family: str = Field("", description="the provider's protocol family; the provider checks it at start")
    kind: Kind
    title: str = ""
    endpoint: str = Field(description="API path the provider client posts to")
    aliases: tuple[str, ...] = Field((), description="other names a request may use")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="what only the provider reads (a LiblibAI template, say); the provider checks it at start",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)
    accepts: Accepts = Field(default_factory=Accepts)
    price: Price = Field(default_factory=Price)

    @model_validator(mode="before")
    @classmethod
    def _earlier_format(cls, data: Any) -> Any:
        """Catalogs written for imaged 0.1 (``limits``, ``price_per_image``, ``currency``) still load."""
        if not isinstance(data, dict) or not ({"limits", "price_per_image", "currency"} & data.keys()):
            return data
        data = dict(data)
        limits = dict(data.pop("limits", {}) or {})
        accepts: dict[str, Any] = dict(data.pop("accepts", {}) or {})
        if "side_min" in limits and "side_max" in limits:
            accepts.setdefault("size", {"sides": (limits.pop("side_min"), limits.pop("side_max"))})
        for old, new in (("prompt_max", "prompt"), ("negative_prompt_max", "negative_prompt")):
            if old in limits:
                accepts.setdefault(new, limits.pop(old))
        for old in ("n_max", "count_max"):
            if old in limits:
                accepts.setdefault("n", (1, limits.pop(old)))
        if limits:
            raise ValueError(f"limits: unknown keys {sorted(limits)} (see accepts in config/models.toml)")
        price: dict[str, Any] = dict(data.pop("price", {}) or {})
        if "price_per_image" in data:
            price.setdefault("per_image", data.pop("price_per_image"))
        if "currency" in data:
            price.setdefault("currency", data.pop("currency"))
        return {**data, "accepts": accepts, "price": price}

    def default_size(self) -> tuple[int, int] | None:
        size = self.defaults.get("size")
        return parse_size(size) if isinstance(size, str) else None


class Catalog:
    """Models by name (and by alias)."""

    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self.aliases = {alias: spec.name for spec in models.values() for alias in spec.aliases}

    def __contains__(self, name: object) -> bool:
        return name in self.models or name in self.aliases

    def get(self, name: str) -> ModelSpec | None:
        return self.models.get(name) or self.models.get(self.aliases.get(name, ""))

    def names(self) -> list[str]:
        """Every name a request may use: models and their aliases."""
        return sorted([*self.models, *self.aliases])

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
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                )
                raise ConfigError(f"model {name!r} in {path}: {problems}") from None
        if not models:
            raise ConfigError(f"model catalog {path} lists no models")
        taken = set(models)
        for spec in models.values():
            clash = taken & set(spec.aliases)
            if clash:
                raise ConfigError(
                    f"model {spec.name!r} in {path}: alias {sorted(clash)[0]!r} is already a name"
                )
            taken |= set(spec.aliases)
        return cls(models)
