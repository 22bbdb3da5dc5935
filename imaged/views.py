"""What a task and the catalog look like to callers: the HTTP API's envelopes and the command line share these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .catalog import Catalog, ModelSpec
from .task import Task


def status_view(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "status": task.status.value,
        "progress": task.progress,
        "model": task.model,
        "provider": task.provider,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "cancel_requested": task.cancel_requested,
        "error": task.error,
    }


def result_view(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "status": task.status.value,
        "result": task.result,
        "error": task.error,
    }


async def with_fresh_links(
    view: dict[str, Any], link: Callable[[str], Awaitable[str | None]] | None
) -> dict[str, Any]:
    """A result view whose images' ``download_url`` is made anew (presigned links expire)."""
    result = view.get("result")
    if link is None or not isinstance(result, dict) or not isinstance(result.get("images"), list):
        return view
    images = []
    for image in result["images"]:
        if isinstance(image, dict) and isinstance(image.get("storage_url"), str):
            image = {**image, "download_url": await link(image["storage_url"])}
        images.append(image)
    return {**view, "result": {**result, "images": images}}


def model_view(catalog: Catalog, available: Iterable[str]) -> list[dict[str, Any]]:
    """The catalog, each model with whether its provider has credentials here (``available``)."""
    providers = set(available)
    return [
        {
            "name": spec.name,
            "provider": spec.provider,
            "kind": spec.kind,
            "title": spec.title,
            "available": spec.provider in providers,
            "family": spec.family,
            "aliases": list(spec.aliases),
            "defaults": spec.defaults,
            "accepts": spec.accepts.model_dump(mode="json", exclude_none=True),
            "sizes": spec.accepts.size.describe() if spec.accepts.size is not None else "",
            "price": spec.price.model_dump(mode="json", exclude_defaults=True) | {"basis": spec.price.basis},
            # as imaged 0.1 showed them
            "limits": legacy_limits(spec),
            "price_per_image": spec.price.per_image,
            "currency": spec.price.currency,
        }
        for spec in sorted(catalog.models.values(), key=lambda s: (s.provider, s.name))
    ]


def legacy_limits(spec: ModelSpec) -> dict[str, Any]:
    """The ``limits`` object of imaged 0.1's model list, for clients that read it."""
    accepts = spec.accepts
    limits: dict[str, Any] = {"n_max": accepts.n[1], "prompt_max": accepts.prompt}
    if accepts.negative_prompt is not None:
        limits["negative_prompt_max"] = accepts.negative_prompt
    if accepts.size is not None and accepts.size.sides is not None:
        limits["side_min"], limits["side_max"] = accepts.size.sides
    return limits
