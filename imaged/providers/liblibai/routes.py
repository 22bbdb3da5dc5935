"""Where a LiblibAI request goes: the line's parameters, the endpoint and templateUuid from the catalog entry's
``options``, and the status path of its family.

Families (how a task is polled): ``webui`` (``/api/generate/webui/status``), ``unified``
(``/api/generate/status``: Kontext, Seedream, Qwen-Image) and ``comfyui`` (``/api/generate/comfy/status``, or
``/api/generate/comfyui/status`` where the first is missing). Lines (what a request looks like): ``star-3``,
``custom``, ``qwen-image``, ``kontext``, ``seedream``, ``comfyui``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...catalog import ModelSpec
from ...errors import InvalidRequest
from .lines import ComfyParams, KontextParams, QwenImageParams, SeedreamParams
from .params import BASE_MODEL_FAMILIES, CustomParams, Star3ImageToImage, Star3TextToImage

Line = Literal["star-3", "custom", "qwen-image", "kontext", "seedream", "comfyui"]

STATUS_PATHS: dict[str, tuple[str, ...]] = {
    "webui": ("/api/generate/webui/status",),
    "unified": ("/api/generate/status",),
    # documented path first; a 2026 client polls the second, and imaged falls back to it on a 404
    "comfyui": ("/api/generate/comfy/status", "/api/generate/comfyui/status"),
}

#: the ComfyUI app's templateUuid when the catalog names none
COMFY_DEFAULT_TEMPLATE = "4df2efa0f18d46dc9758803e478eb51c"


class LiblibOptions(BaseModel):
    """A LiblibAI model's ``options`` in the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: Line | None = Field(
        None, description="the request's shape (default: star-3, or custom for kind custom)"
    )
    template: str | None = Field(None, description="templateUuid")
    templates: dict[str, str] = Field(
        default_factory=dict, description="templateUuid by variant (custom: f1_t2i...; kontext: t2i, i2i)"
    )
    endpoints: dict[str, str] = Field(default_factory=dict, description="API path by mode (t2i, i2i)")
    checkpoint: str | None = Field(None, description="the fixed checkPointId (qwen-image)")
    model: str | None = Field(
        None, description="generateParams.model (kontext: pro | max; seedream: version)"
    )

    def line_of(self, spec: ModelSpec) -> Line:
        return self.line or ("custom" if spec.kind == "custom" else "star-3")


def params_model(spec: ModelSpec, options: LiblibOptions) -> type[BaseModel]:
    line = options.line_of(spec)
    if line == "star-3":
        return Star3ImageToImage if spec.kind == "image-to-image" else Star3TextToImage
    models: dict[str, type[BaseModel]] = {
        "custom": CustomParams,
        "qwen-image": QwenImageParams,
        "kontext": KontextParams,
        "seedream": SeedreamParams,
        "comfyui": ComfyParams,
    }
    return models[line]


def route(spec: ModelSpec, params: dict[str, Any]) -> tuple[str, str]:
    """The endpoint and templateUuid of a validated request, from the catalog."""
    options = LiblibOptions.model_validate(spec.options)
    line = options.line_of(spec)
    generate = params.get("generateParams", {})
    variant = "template"
    if line == "custom":
        family = BASE_MODEL_FAMILIES.get(str(params.get("baseModelType", "sd")).lower(), "sd")
        mode = "i2i" if generate.get("sourceImage") else "t2i"
        variant = f"{family}_{mode}"
        endpoint = options.endpoints.get(mode) or (spec.endpoint if mode == "t2i" else "")
        template = options.templates.get(variant)
    elif line == "kontext":
        variant = "i2i" if generate.get("image_list") else "t2i"
        endpoint, template = options.endpoints.get(variant, ""), options.templates.get(variant)
    elif line == "comfyui":
        endpoint, template = spec.endpoint, options.template or COMFY_DEFAULT_TEMPLATE
    else:
        endpoint, template = spec.endpoint, options.template
    if not endpoint or not template:
        raise InvalidRequest(f"model {spec.name!r}: the catalog has no endpoint or template for {variant}")
    return endpoint, template


def fixed_params(options: LiblibOptions) -> dict[str, Any]:
    """``generateParams`` the catalog fixes (a request cannot change them): the checkpoint, the model version."""
    fixed: dict[str, Any] = {}
    if options.checkpoint:
        fixed["checkPointId"] = options.checkpoint
    if options.model:
        fixed["model"] = options.model
    return fixed
