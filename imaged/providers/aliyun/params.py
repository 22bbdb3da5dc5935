"""DashScope request parameters: one strict model per kind of work, and the submit body."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...catalog import ModelSpec
from ..params import between, check_text, limit

SEED_MAX = 2147483647

SIZE_RE = re.compile(r"^(\d+)\*(\d+)$")
_SIZE_X_RE = re.compile(r"^\d+\s*[xX×]\s*\d+$")

Seed = Annotated[StrictInt, between(0, SEED_MAX)]


class TextToImageParams(BaseModel):
    """Parameters of the wanx text-to-image models (``kind = "text-to-image"``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: StrictStr
    negative_prompt: StrictStr | None = None
    size: StrictStr = "1024*1024"
    n: StrictInt = 1
    seed: Seed | None = None
    prompt_extend: StrictBool | None = None
    watermark: StrictBool | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info, "prompt_max", 800, required=True)

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_text(value, info, "negative_prompt_max", 500, required=False)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str, info: ValidationInfo) -> str:
        low, high = limit(info, "side_min", 512), limit(info, "side_max", 1440)
        match = SIZE_RE.match(value)
        if match is None:
            if _SIZE_X_RE.match(value):
                raise ValueError("must be 'W*H' with '*', as the API requires (e.g. 1024*1024), not 'x'")
            raise ValueError("must be 'W*H' (e.g. 1024*1024)")
        if not all(low <= int(side) <= high for side in match.groups()):
            raise ValueError(f"each side must be {low}..{high}")
        return value

    @field_validator("n")
    @classmethod
    def _n(cls, value: int, info: ValidationInfo) -> int:
        high = limit(info, "n_max", 4)
        if not 1 <= value <= high:
            raise ValueError(f"must be 1..{high}")
        return value


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


class ImageEditParams(BaseModel):
    """Parameters of ``wanx2.1-imageedit`` (kind ``image-edit``). Image URLs are passed on, never fetched."""

    model_config = ConfigDict(extra="forbid", strict=True)

    function: ImageEditFunction
    prompt: StrictStr
    base_image_url: StrictStr
    mask_image_url: StrictStr | None = None
    n: StrictInt = 1
    seed: Seed | None = None
    strength: Annotated[StrictFloat, between(0.0, 1.0)] | None = None
    upscale_factor: Annotated[StrictInt, between(1, 4)] | None = None
    top_scale: Scale | None = None
    bottom_scale: Scale | None = None
    left_scale: Scale | None = None
    right_scale: Scale | None = None
    is_sketch: StrictBool | None = None
    watermark: StrictBool | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info, "prompt_max", 800, required=True)

    @field_validator("base_image_url", "mask_image_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://", "oss://")):
            raise ValueError("must be an http(s) (or oss://) URL of the image")
        return value

    @field_validator("n")
    @classmethod
    def _n(cls, value: int, info: ValidationInfo) -> int:
        high = limit(info, "n_max", 4)
        if not 1 <= value <= high:
            raise ValueError(f"must be 1..{high}")
        return value

    @model_validator(mode="after")
    def _mask(self) -> ImageEditParams:
        if self.function == "description_edit_with_mask" and self.mask_image_url is None:
            raise ValueError("mask_image_url is required when function is 'description_edit_with_mask'")
        return self


# Keys that go into the request's ``input`` object; every other parameter goes into ``parameters``.
INPUT_KEYS = frozenset({"prompt", "negative_prompt", "function", "base_image_url", "mask_image_url"})

PARAMS_BY_KIND: dict[str, type[BaseModel]] = {
    "text-to-image": TextToImageParams,
    "image-edit": ImageEditParams,
}


def request_body(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The submit body: ``{"model", "input": {...}, "parameters": {...}}``."""
    return {
        "model": spec.name,
        "input": {key: value for key, value in params.items() if key in INPUT_KEYS},
        "parameters": {key: value for key, value in params.items() if key not in INPUT_KEYS},
    }
