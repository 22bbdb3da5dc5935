"""DashScope request parameters: one strict model per (family, kind), and the submit body of each family.

Requests give parameters flat, as the original service took them (``prompt``, ``size``, ``n``, ...); the limits
come from the catalog's ``accepts``. Two families (``providers.md``, "Model families, 2026"):

- ``classic``: ``text2image`` / ``image2image`` ``image-synthesis``; body ``{"model", "input", "parameters"}``.
- ``messages``: ``image-generation/generation``; the prompt and input images become one user message, and
  ``negative_prompt`` moves from ``input`` to ``parameters``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...catalog import ModelSpec, parse_size
from ..params import between, check_count, check_image_urls, check_size_text, check_text

SEED_MAX = 2147483647
FAMILIES = ("classic", "messages")

Seed = Annotated[StrictInt, between(0, SEED_MAX)]


class _Common(BaseModel):
    """What every DashScope model takes: a prompt, a count, a seed, a watermark switch."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: StrictStr
    n: StrictInt = 1
    seed: Seed | None = None
    watermark: StrictBool | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @field_validator("n")
    @classmethod
    def _n(cls, value: int, info: ValidationInfo) -> int:
        return check_count(value, info)


class TextToImageParams(_Common):
    """Text-to-image (classic and messages): wan2.x, wanx2.x, qwen-image."""

    negative_prompt: StrictStr | None = None
    size: StrictStr | None = None  # the catalog's default is always there: models differ in their own
    prompt_extend: StrictBool | None = None

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_text(value, info, negative=True, required=False)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_size_text(value, info)


class ImageToImageParams(TextToImageParams):
    """Image-to-image with input images (wan2.5-i2i-preview, wan2.6-image): URLs or data URIs, never fetched."""

    images: list[StrictStr] = Field(default_factory=list, validate_default=True)  # the catalog may want some

    @field_validator("images")
    @classmethod
    def _images(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_image_urls(value, info, data_uris=True)


ImageEditFunction = Literal[
    "stylization_all",
    "stylization_local",
    "description_edit",
    "description_edit_with_mask",
    "remove_watermark",
    "expand",
    "super_resolution",
    "colorization",
    "doodle",
    "control_cartoon_feature",
]

Scale = Annotated[StrictFloat, between(1.0, 2.0)]


class ImageEditParams(_Common):
    """``wanx2.1-imageedit`` (kind ``image-edit``). Image URLs are passed on, never fetched."""

    function: ImageEditFunction
    base_image_url: StrictStr
    mask_image_url: StrictStr | None = None
    strength: Annotated[StrictFloat, between(0.0, 1.0)] | None = None
    upscale_factor: Annotated[StrictInt, between(1, 4)] | None = None
    top_scale: Scale | None = None
    bottom_scale: Scale | None = None
    left_scale: Scale | None = None
    right_scale: Scale | None = None
    is_sketch: StrictBool | None = None

    @field_validator("base_image_url", "mask_image_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://", "oss://")):
            raise ValueError("must be an http(s) (or oss://) URL of the image")
        return value

    @model_validator(mode="after")
    def _mask(self) -> ImageEditParams:
        if self.function == "description_edit_with_mask" and self.mask_image_url is None:
            raise ValueError("mask_image_url is required when function is 'description_edit_with_mask'")
        return self


PARAMS: dict[tuple[str, str], type[_Common]] = {
    ("classic", "text-to-image"): TextToImageParams,
    ("classic", "image-to-image"): ImageToImageParams,
    ("classic", "image-edit"): ImageEditParams,
    ("messages", "text-to-image"): TextToImageParams,
    ("messages", "image-to-image"): ImageToImageParams,
}

# Keys that go into a classic request's ``input`` object; every other parameter goes into ``parameters``.
INPUT_KEYS = frozenset(
    {"prompt", "negative_prompt", "function", "base_image_url", "mask_image_url", "images"}
)


def family_of(spec: ModelSpec) -> str:
    return spec.family or "classic"  # catalogs of imaged 0.1 name no family


def request_body(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The submit body of the model's family."""
    if family_of(spec) == "messages":
        content: list[dict[str, str]] = [{"text": params["prompt"]}]
        content += [{"image": url} for url in params.get("images", [])]
        return {
            "model": spec.name,
            "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": {k: v for k, v in params.items() if k not in ("prompt", "images")},
        }
    return {
        "model": spec.name,
        "input": {key: value for key, value in params.items() if key in INPUT_KEYS},
        "parameters": {key: value for key, value in params.items() if key not in INPUT_KEYS},
    }


def output_size(spec: ModelSpec, params: dict[str, Any]) -> tuple[int, int] | None:
    """The size a request asked for (a tier resolved through the catalog), if it names one."""
    size = params.get("size")
    if not isinstance(size, str):
        return None
    rule = spec.accepts.size
    if rule is not None and size in rule.tiers:
        size = rule.tiers[size]
    return parse_size(size)
