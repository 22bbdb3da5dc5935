"""LiblibAI's newer lines (``providers.md``, "LiblibAI: lines and their bodies"): Qwen-Image, F.1 Kontext,
Seedream 4.x and ComfyUI workflows. Like the older lines, a request's fields may sit at the top of ``parameters``
or inside ``generateParams``; limits come from the catalog's ``accepts``; input images are URLs passed on.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..params import between, check_count, check_image_urls, check_side, check_size, check_text, one_of
from .params import AdditionalNetwork

#: images a Seedream task may involve at most: references plus outputs
SEEDREAM_IMAGES_MAX = 15
#: the layout of a ComfyUI workflow's node whose inputs name the size and count of the output
LATENT_NODE = "EmptyLatentImage"

ZeroOrOne = Annotated[StrictInt, one_of(0, 1)]


class _Prompted(BaseModel):
    """A prompt and an image count (``imgCount``), checked against the catalog."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: StrictStr
    imgCount: StrictInt = 1

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @field_validator("imgCount")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return check_count(value, info)


class _Sized(_Prompted):
    """``width`` and ``height``, each and together within the catalog's size rule."""

    width: StrictInt | None = None
    height: StrictInt | None = None

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        return None if value is None else check_side(value, info)

    @model_validator(mode="after")
    def _size(self, info: ValidationInfo) -> _Sized:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.width is not None and self.height is not None:
            check_size(self.width, self.height, info)
        return self


class QwenImageParams(_Sized):
    """Qwen-Image on the webui endpoint; its checkpoint is fixed by the catalog."""

    model_config = ConfigDict(extra="allow", strict=True)

    negativePrompt: StrictStr | None = None
    steps: Annotated[StrictInt, between(1, 60)] | None = None
    cfgScale: Annotated[StrictFloat, between(1.0, 15.0)] | None = None
    clipSkip: Annotated[StrictInt, between(1, 12)] | None = None
    sampler: Annotated[StrictInt, Field(ge=0)] | None = None
    seed: Annotated[StrictInt, between(-1, 9999999999)] | None = None
    randnSource: ZeroOrOne | None = None
    additionalNetwork: Annotated[list[AdditionalNetwork], Field(max_length=5)] | None = None
    controlNet: Annotated[list[dict[str, Any]], Field(max_length=4)] | None = None

    @field_validator("negativePrompt")
    @classmethod
    def _negative(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_text(value, info, negative=True, required=False)


KontextRatio = Literal["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "9:21", "21:9"]


def closest_ratio(width: int, height: int) -> str:
    """The Kontext aspect ratio closest to ``width`` / ``height``."""
    wanted = width / max(height, 1)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - math.log(max(wanted, 1e-6)))

    ratios: tuple[str, ...] = get_args(KontextRatio)
    return min(ratios, key=distance)


class KontextParams(_Prompted):
    """F.1 Kontext: text-to-image, or image-to-image when ``image_list`` holds images (pro takes one)."""

    aspectRatio: KontextRatio = "1:1"
    guidance_scale: Annotated[StrictFloat, between(1.0, 20.0)] | None = None
    image_list: list[StrictStr] = []

    @field_validator("image_list")
    @classmethod
    def _images(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_image_urls(value, info)


class SeedreamParams(_Sized):
    """Seedream 4.x: up to 15 images per task, optional reference images."""

    sequentialImageGeneration: Literal["disabled", "auto"] | None = None
    referenceImages: list[StrictStr] = []
    promptMagic: ZeroOrOne | None = None

    @field_validator("referenceImages")
    @classmethod
    def _references(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_image_urls(value, info)

    @model_validator(mode="after")
    def _total(self) -> SeedreamParams:
        if len(self.referenceImages) + self.imgCount > SEEDREAM_IMAGES_MAX:
            raise ValueError(
                f"referenceImages plus imgCount must be at most {SEEDREAM_IMAGES_MAX} "
                f"(got {len(self.referenceImages)} + {self.imgCount})"
            )
        return self


class ComfyNode(BaseModel):
    """One node of a published ComfyUI workflow: only its ``inputs`` may be changed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    class_type: StrictStr
    inputs: dict[str, Any]


class ComfyParams(BaseModel):
    """A ComfyUI workflow run: ``workflowUuid`` plus the nodes whose inputs change, by node id."""

    model_config = ConfigDict(extra="allow", strict=True)

    workflowUuid: Annotated[StrictStr, Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _nodes(self) -> ComfyParams:
        extra = self.model_extra or {}
        if not extra:
            raise ValueError("name at least one node (node id: {class_type, inputs}) whose inputs to set")
        for node_id, node in extra.items():
            try:
                extra[node_id] = ComfyNode.model_validate(node).model_dump()
            except ValueError as exc:
                raise ValueError(
                    f"node {node_id!r}: must be {{class_type, inputs}} ({exc.__class__.__name__})"
                ) from None
        return self


def comfy_batch(params: dict[str, Any]) -> int:
    """How many images a workflow run makes: the ``batch_size`` of its latent-image node (1 when unknown)."""
    for node in params.values():
        if isinstance(node, dict) and node.get("class_type") == LATENT_NODE:
            batch = node.get("inputs", {}).get("batch_size", 1)
            if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
                return batch
    return 1


def comfy_size(params: dict[str, Any]) -> tuple[int, int] | None:
    for node in params.values():
        if isinstance(node, dict) and node.get("class_type") == LATENT_NODE:
            inputs = node.get("inputs", {})
            width, height = inputs.get("width"), inputs.get("height")
            if isinstance(width, int) and isinstance(height, int):
                return width, height
    return None
