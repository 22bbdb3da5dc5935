"""What every LiblibAI line shares when it checks a submit: the error type, the validated job, and the field
checks (a missing required field is code 100050, a present but wrong one is 100000)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StatusKind = Literal["webui", "unified", "comfy"]
"""Which status paths answer a task: "webui" (webui/status and the unified one), "unified" (the same two: lines
documented on the unified path, which third-party clients also poll on webui/status), "comfy" (the two ComfyUI
status spellings and the unified path)."""


class LiblibError(Exception):
    """A LiblibAI error answer: an envelope code and message."""

    def __init__(self, code: int, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.retry_after = retry_after


@dataclass
class Job:
    """A validated generation request."""

    kind: StatusKind
    family: str
    """The price and rendering family: star3, f1, sd, qwen, kontext-pro, kontext-max, seedream, comfy."""
    template: str
    prompt: str
    width: int
    height: int
    count: int
    seed: int | None
    inputs: list[str] = field(default_factory=list)
    """Input image URLs, for the unreachable check."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Kept on the task (e.g. the ComfyUI output node)."""


def missing(name: str) -> LiblibError:
    return LiblibError(100050, f"parameter completeness check failed: {name} is required")


def invalid(name: str, why: str) -> LiblibError:
    return LiblibError(100000, f"invalid parameters: {name} {why}")


def integer(params: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(name, f"must be an integer in [{low}, {high}]")
    return value


def number(params: dict[str, Any], name: str, low: float, high: float) -> None:
    value = params.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(name, f"must be a number in [{low}, {high}]")


def text(params: dict[str, Any], name: str, *, required: bool, limit: int = 2000) -> str:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return ""
    if not isinstance(value, str):
        raise invalid(name, "must be a string")
    if len(value) > limit:
        raise invalid(name, f"must be at most {limit} characters")
    return value


def choice(params: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name, default)
    if value not in allowed:
        raise invalid(name, f"must be one of {', '.join(allowed)}")
    return str(value)


def url(params: dict[str, Any], name: str) -> str:
    """An input image must be a public http(s) URL; the emulator never fetches it."""
    value = text(params, name, required=True, limit=4096)
    if not value.startswith(("http://", "https://")):
        raise invalid(name, "must be a public http(s) URL")
    return value


def url_list(params: dict[str, Any], name: str, low: int, high: int, *, required: bool = True) -> list[str]:
    """A list of `low..high` public image URLs (absent: [] unless required)."""
    value = params.get(name)
    if value is None or value == []:
        if required:
            raise missing(name)
        return []
    if not isinstance(value, list):
        raise invalid(name, "must be a list of image URLs")
    if not low <= len(value) <= high:
        raise invalid(name, f"must hold {low} to {high} images, got {len(value)}")
    for item in value:
        if not isinstance(item, str) or not item.startswith(("http://", "https://")):
            raise invalid(name, "must hold public http(s) URLs")
    return list(value)
