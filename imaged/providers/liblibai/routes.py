"""Where a LiblibAI request goes: the endpoint and templateUuid from the catalog entry's options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...catalog import ModelSpec
from ...errors import InvalidRequest
from .params import BASE_MODEL_FAMILIES


class LiblibOptions(BaseModel):
    """A LiblibAI model's ``options`` in the catalog: its templateUuid, or for custom models one per variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str | None = Field(None, description="templateUuid")
    templates: dict[str, str] = Field(
        default_factory=dict, description="templateUuid by variant (custom models)"
    )
    endpoints: dict[str, str] = Field(default_factory=dict, description="API path by variant (custom models)")


def route(spec: ModelSpec, params: dict[str, Any]) -> tuple[str, str]:
    """The endpoint and templateUuid of a validated request, from the catalog."""
    options = LiblibOptions.model_validate(spec.options)
    if spec.kind != "custom":
        endpoint, template, variant = spec.endpoint, options.template, "template"
    else:
        generate = params.get("generateParams", {})
        family = BASE_MODEL_FAMILIES.get(str(params.get("baseModelType", "sd")).lower(), "sd")
        mode = "i2i" if generate.get("sourceImage") else "t2i"
        variant = f"{family}_{mode}"
        endpoint = options.endpoints.get(mode) or (spec.endpoint if mode == "t2i" else "")
        template = options.templates.get(variant)
    if not endpoint or not template:
        raise InvalidRequest(f"model {spec.name!r}: the catalog has no endpoint or template for {variant}")
    return endpoint, template
