"""Settings of the provider emulator, changeable at run time through `POST /_sim/config`."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

LEGACY_PROMPT_LIMITS = {
    name: 800 for name in ("wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.1-t2i-turbo", "wan2.1-t2i-plus")
}
SECRET_FIELDS = frozenset(
    {"dashscope_api_key", "liblib_secret_key", "dashscope_extra_api_keys", "liblib_extra_keys"}
)


@dataclass
class SimulatorConfig:
    """What the emulated providers accept and how they behave; defaults mirror the real providers' limits."""

    dashscope_api_key: str = "sk-sim"
    liblib_access_key: str = "sim-access"
    liblib_secret_key: str = "sim-secret"
    task_seconds: float = 2.0
    """How long each emulated task runs (0 = done at the first poll)."""
    jitter_seconds: float = 0.0
    """Each task runs `task_seconds` plus a uniform random extra in [0, jitter_seconds]."""
    liblib_concurrency_limit: int | None = 5
    """Tasks in flight per AccessKey; over it submit answers code 100054. None lifts the cap."""
    liblib_submit_per_second: float | None = 1.0
    """Submits per second per AccessKey; over it submit answers 429. None lifts the limit."""
    dashscope_concurrency_limit: int | None = 2
    """Tasks in flight per API key; over it submit answers 429 Throttling. None lifts the cap."""
    dashscope_submit_per_second: float | None = 2.0
    public_url: str | None = None
    """Base of the image URLs handed out; default: the server's own URL."""
    # Additions beyond the basic contract; all optional.
    dashscope_extra_api_keys: list[str] = field(default_factory=list)
    """More accepted DashScope keys, each its own account (own limits and stats)."""
    liblib_extra_keys: dict[str, str] = field(default_factory=dict)
    """More LiblibAI credentials, AccessKey -> SecretKey, each its own account."""
    liblib_error_style: Literal["http", "envelope"] = "http"
    """How LiblibAI reports 401/403/429: "http" = that HTTP status with the envelope carrying the same code;
    "envelope" = HTTP 200 with the code only in the envelope. providers.md says both occur."""
    liblib_initial_balance: int = 1_000_000
    """Points each LiblibAI account starts with; a submit costing more than what is left answers 100021.
    Balances are this minus the points spent, so changing it at run time applies at once."""
    image_fill: Literal["solid", "noise"] = "solid"
    """"solid" images compress to a few KB; "noise" images are incompressible (about 3 bytes per pixel)."""
    # 2026 model families (providers.md, "Model families, 2026").
    dashscope_wan25_min_pixels: int = 1280 * 1280
    """Lower bound of the total-pixel window of wan2.5-t2i-preview and wan2.6 (W*H sizes); the upper bound is
    1440². One older revision of the docs gave 768²."""
    dashscope_prompt_limits: dict[str, int] = field(default_factory=lambda: dict(LEGACY_PROMPT_LIMITS))
    """Characters of the prompt a DashScope model keeps (longer prompts are truncated silently, never refused),
    overriding the 2026 table in `dashscope_models.MODELS`. The default keeps the 2.1 models (both spellings) at
    800, the emulator's behaviour before the 2026 table said 500; set {} to follow the table everywhere."""
    unreachable_inputs: list[str] = field(default_factory=lambda: ["unreachable"])
    """Input image URLs containing any of these strings (a host name, a path part) count as unreachable: the
    submit is refused, DashScope with 400 InternalError.Algo.InvalidParameter, LiblibAI with code 100030. No
    input is ever fetched."""
    liblib_timeout_seconds: float = 1800.0
    """A LiblibAI task still running this long after its submit ends in generateStatus 7 (points refunded), as
    the real service does after 30 minutes; lower it (or raise task_seconds) to make tasks time out. The
    "status7" poll fault gives the same outcome on one task."""
    liblib_seedream_size_rules: Literal["newer", "older"] = "newer"
    """Seedream 4.0 size rule (sources disagree): "newer" = sides 512..4096 with W*H <= 2048²; "older" = sides
    1024..4096 with W*H in [1024², 4096²]. Seedream 4.5 always takes W*H in [3,686,400, 4096²], W/H in
    [1/16, 16]."""

    @classmethod
    def without_limits(cls, **values: Any) -> SimulatorConfig:
        """A config with every provider concurrency and rate limit lifted (benchmarks, tests not about limits)."""
        return cls(
            liblib_concurrency_limit=None,
            liblib_submit_per_second=None,
            dashscope_concurrency_limit=None,
            dashscope_submit_per_second=None,
            **values,
        )

    def __post_init__(self) -> None:
        if self.task_seconds < 0 or self.jitter_seconds < 0:
            raise ValueError("task_seconds and jitter_seconds must be >= 0")
        for name in ("liblib_concurrency_limit", "dashscope_concurrency_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null")
        for name in ("liblib_submit_per_second", "dashscope_submit_per_second"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or null")
        if self.public_url is not None:
            self.public_url = self.public_url.rstrip("/")
        if self.liblib_initial_balance < 0:
            raise ValueError("liblib_initial_balance must be >= 0")
        if not 1 <= self.dashscope_wan25_min_pixels <= 1440 * 1440:
            raise ValueError("dashscope_wan25_min_pixels must be in [1, 1440*1440]")
        if any(limit < 1 for limit in self.dashscope_prompt_limits.values()):
            raise ValueError("dashscope_prompt_limits values must be >= 1")
        if self.liblib_timeout_seconds <= 0:
            raise ValueError("liblib_timeout_seconds must be > 0")

    def unreachable(self, url: str) -> bool:
        """Whether an input image URL is one the emulated provider fails to download."""
        return any(marker and marker in url for marker in self.unreachable_inputs)

    def dashscope_keys(self) -> set[str]:
        return {self.dashscope_api_key, *self.dashscope_extra_api_keys}

    def liblib_secrets(self) -> dict[str, str]:
        """AccessKey -> SecretKey of every accepted LiblibAI credential."""
        return {**self.liblib_extra_keys, self.liblib_access_key: self.liblib_secret_key}

    def public(self) -> dict[str, Any]:
        """The settings without secrets, for `GET /_sim/config` and the stats."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            out.pop(name)
        out["dashscope_credentials"] = sorted(key_label(k) for k in self.dashscope_keys())
        out["liblib_credentials"] = sorted(self.liblib_secrets())
        return out

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update in place, all or nothing; raises ValueError with a readable message."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        merged = {**dataclasses.asdict(self), **changes}
        try:
            checked = _ADAPTER.validate_python(merged)
        except ValidationError as exc:
            raise ValueError(_short(exc)) from None
        for name in names:
            setattr(self, name, getattr(checked, name))


def key_label(api_key: str) -> str:
    """How a DashScope key is named in stats: a short hash, since the key itself is a secret.

    LiblibAI credentials are named by their AccessKey, which is not secret.
    """
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_ADAPTER: TypeAdapter[SimulatorConfig] = TypeAdapter(SimulatorConfig)
