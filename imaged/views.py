"""What a task and the catalog look like to callers: the HTTP API's envelopes and the command line share these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .catalog import Catalog
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
            "defaults": spec.defaults,
            "limits": spec.limits,
            "price_per_image": spec.price_per_image,
            "currency": spec.currency,
        }
        for spec in sorted(catalog.models.values(), key=lambda s: (s.provider, s.name))
    ]
