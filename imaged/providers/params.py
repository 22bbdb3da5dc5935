"""Helpers for the providers' parameter models: readable validation errors and catalog limits.

Each provider keeps its parameter models (pydantic, strict types) next to its client. This module turns a
pydantic ``ValidationError`` into one :class:`imaged.errors.InvalidRequest` whose message names each bad field
the way the request spells it, e.g. ``parameters.size: each side must be 512..1440 (got 2000*1024)``.

What a model accepts (``spec.accepts`` in the catalog: prompt length, image count, size rule, input images)
reaches the validators through the validation context, ``{"accepts": Accepts}``; the checks here read it, so a
new model of a known family needs a catalog entry, not code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails

from ..catalog import Accepts, parse_size
from ..errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)
N = TypeVar("N", int, float)

_GOT_MAX_CHARS = 60
_SIZE_X = re.compile(r"^\d+\s*[xX×]\s*\d+$")


def between(low: N, high: N) -> AfterValidator:
    """A range check whose message reads ``must be low..high``."""

    def check(value: N) -> N:
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}")
        return value

    return AfterValidator(check)


def one_of(*choices: int) -> AfterValidator:
    """An integer enumeration (``Literal`` would let ``true`` pass as 1)."""

    def check(value: int) -> int:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return value

    return AfterValidator(check)


def accepts_of(info: ValidationInfo) -> Accepts:
    """The model's catalog ``accepts`` from the validation context (the defaults when validating without one)."""
    context = info.context if isinstance(info.context, Mapping) else {}
    found = context.get("accepts")
    return found if isinstance(found, Accepts) else Accepts()


def check_text(value: str, info: ValidationInfo, *, negative: bool = False, required: bool = True) -> str:
    """A prompt (or negative prompt): not blank when required, at most the catalog's number of characters.

    Prompts longer than the limit are rejected, not truncated: the providers truncate silently, and an image
    made from a cut prompt is a silent surprise.
    """
    if required and not value.strip():
        raise ValueError("must not be empty")
    accepts = accepts_of(info)
    maximum = (accepts.negative_prompt or accepts.prompt) if negative else accepts.prompt
    if len(value) > maximum:
        raise ValueError(f"must be at most {maximum} characters (got {len(value)} characters)")
    return value


def check_count(value: int, info: ValidationInfo) -> int:
    """The number of images asked for, within the catalog's ``n``."""
    low, high = accepts_of(info).n
    if not low <= value <= high:
        raise ValueError(f"must be {low}..{high}" if low != high else f"must be {low} for this model")
    return value


def check_side(value: int, info: ValidationInfo) -> int:
    """One side (width or height) within the catalog's ``size.sides``; the other rules need both sides."""
    rule = accepts_of(info).size
    if rule is not None and rule.sides is not None and not rule.sides[0] <= value <= rule.sides[1]:
        raise ValueError(f"must be {rule.sides[0]}..{rule.sides[1]}")
    return value


def check_size(width: int, height: int, info: ValidationInfo) -> None:
    """An output size within the catalog's size rule (no rule: anything the provider takes)."""
    rule = accepts_of(info).size
    problem = rule.problem(width, height) if rule is not None else None
    if problem is not None:
        raise ValueError(problem)


def check_size_text(value: str, info: ValidationInfo) -> str:
    """A ``"W*H"`` size (or a tier name such as ``"1K"`` where the model has tiers) within the catalog's rule."""
    rule = accepts_of(info).size
    if rule is not None and value in rule.tiers:
        return value
    parsed = parse_size(value)  # (SizeRule.text_problem says less: this names the 'x' mistake and the tiers)
    if parsed is None:
        if _SIZE_X.match(value):
            raise ValueError("must be 'W*H' with '*', as the API requires (e.g. 1024*1024), not 'x'")
        tiers = f" or one of {', '.join(rule.tiers)}" if rule is not None and rule.tiers else ""
        raise ValueError(f"must be 'W*H' (e.g. 1024*1024){tiers}")
    check_size(*parsed, info)
    return value


def check_image_urls(value: list[str], info: ValidationInfo, *, data_uris: bool = False) -> list[str]:
    """Input images: public URLs the provider fetches (imaged never does), as many as the catalog allows."""
    allowed = accepts_of(info).images or (0, 0)
    if not allowed[0] <= len(value) <= allowed[1]:
        if allowed[1] == 0:
            raise ValueError("this model takes no input images")
        raise ValueError(f"must hold {allowed[0]}..{allowed[1]} images (got {len(value)})")
    schemes = ("http://", "https://", "data:image/") if data_uris else ("http://", "https://")
    for url in value:
        if not url.startswith(schemes):
            raise ValueError(
                "each image must be a public http(s) URL" + (" or a data:image/ URI" if data_uris else "")
            )
    return value


def got(value: Any, *, as_json: bool = False) -> str:
    """A short rendering of a rejected value for an error message (strings bare unless ``as_json``)."""
    if isinstance(value, str) and not as_json and value.strip() == value and value:
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > _GOT_MAX_CHARS:
        text = text[: _GOT_MAX_CHARS - 3] + "..."
    return text


def location(prefix: str, loc: tuple[int | str, ...]) -> str:
    """``prefix`` plus a pydantic location: ``parameters.generateParams.additionalNetwork[0].weight``."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known parameter"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length', '?')} items"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', '?')} items"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    message = error["msg"]
    return message[:1].lower() + message[1:]


def format_validation_error(
    exc: ValidationError,
    *,
    prefix: str = "parameters",
    where: Mapping[str, str] | None = None,
    allowed: Callable[[tuple[int | str, ...]], list[str] | None] | None = None,
) -> str:
    """One line per error, ``<field>: <what is wrong> (got <value>)``, joined with ``; ``.

    ``where`` maps a top-level key to the prefix it was given under (LiblibAI fields may sit at the top of
    ``parameters`` or inside ``generateParams``); ``allowed`` lists the known keys at a location (for
    unknown keys).
    """
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        base = prefix
        if where and loc and isinstance(loc[0], str):
            base = where.get(loc[0], prefix)
        text = f"{location(base, loc)}: {_describe(error)}"
        if error["type"] == "extra_forbidden" and allowed is not None:
            known = allowed(loc[:-1])
            if known:
                text += f" (expected one of: {', '.join(known)})"
        elif error["type"] != "missing" and "input" in error and loc and "(got " not in text:
            value = error["input"]
            # a wrong type shows the value as JSON, so that "1" (a string) does not read as 1
            text += f" (got {got(value, as_json=error['type'] in _TYPE_NAMES)})"
        lines.append(text)
    return "; ".join(lines)


def validate_model(
    model: type[M],
    data: Any,
    *,
    accepts: Accepts | None = None,
    context: Mapping[str, Any] | None = None,
    prefix: str = "parameters",
    where: Mapping[str, str] | None = None,
) -> M:
    """Validate ``data`` with ``model`` (the catalog's ``accepts`` in the context) or raise ``InvalidRequest``."""
    full_context: dict[str, Any] = dict(context or {})
    full_context["accepts"] = accepts or Accepts()

    def allowed(loc: tuple[int | str, ...]) -> list[str] | None:
        return field_names(model) if not loc else None

    try:
        return model.model_validate(data, context=full_context)
    except ValidationError as exc:
        message = format_validation_error(exc, prefix=prefix, where=where, allowed=allowed)
        raise InvalidRequest(message) from exc


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts (aliases where set)."""
    return [field.alias or name for name, field in model.model_fields.items()]
