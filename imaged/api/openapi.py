"""The OpenAPI 3.1 description of the HTTP API, built from the contract models (a test keeps it in sync with the
routes)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from .. import __version__
from ..contract import TASK_ID_PATTERN, ErrorInfo, Request, Result, Status
from .openapi_v1 import IDEMPOTENCY_KEY, openai_paths, openai_schemas

# Bounds of GET /api/v1/tasks, part of the documented contract.
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 100
LIST_MAX_OFFSET = 100_000


def _envelope_schema(results: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["success", "message", "results"],
                    "properties": {
                        "success": {"const": True},
                        "message": {"type": "string"},
                        "results": results,
                    },
                }
            }
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("ErrorEnvelope")}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TASK_ID_PARAM = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": TASK_ID_PATTERN},
}
_AUTH_ERRORS = {"401": _error("missing or invalid credentials")}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _components() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(Request, "validation"), (Result, "serialization"), (ErrorInfo, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["ErrorEnvelope"] = {
        "type": "object",
        "required": ["success", "message", "results"],
        "properties": {
            "success": {"const": False},
            "message": {"type": "string"},
            "results": {"type": "null"},
        },
    }
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    schemas["TaskStatus"] = {
        "type": "object",
        "required": ["task_id", "status"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"enum": [s.value for s in Status]},
            "progress": {"type": "number"},
            "model": {"type": ["string", "null"]},
            "provider": {"type": ["string", "null"]},
            "created_at": timestamp,
            "updated_at": timestamp,
            "cancel_requested": {"type": "boolean"},
            "error": {"anyOf": [_ref("ErrorInfo"), {"type": "null"}]},
        },
    }
    schemas["TaskResult"] = {
        "type": "object",
        "required": ["task_id", "status", "result", "error"],
        "properties": {
            "task_id": {"type": "string"},
            "status": {"enum": [s.value for s in Status]},
            "result": {"anyOf": [_ref("Result"), {"type": "null"}]},
            "error": {"anyOf": [_ref("ErrorInfo"), {"type": "null"}]},
        },
    }
    schemas["TaskList"] = {
        "type": "object",
        "required": ["tasks", "total", "limit", "offset", "next_offset"],
        "properties": {
            "tasks": {"type": "array", "items": _ref("TaskStatus")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
        },
    }
    schemas["Model"] = {
        "type": "object",
        "required": ["name", "provider", "kind", "available"],
        "properties": {
            "name": {"type": "string"},
            "provider": {"type": "string"},
            "kind": {"type": "string"},
            "title": {"type": "string"},
            "available": {"type": "boolean", "description": "the daemon has credentials for its provider"},
            "family": {"type": "string", "description": "the provider's protocol family"},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "defaults": {"type": "object"},
            "accepts": {
                "type": "object",
                "description": "what a request may ask: prompt (characters), negative_prompt, n [min, max], "
                "size (sides, pixels, ratio, choices, tiers), images [min, max] input images",
            },
            "sizes": {"type": "string", "description": "the size rule in words"},
            "price": {
                "type": "object",
                "description": "per_image, tiers (by size tier), or per_point (provider points); basis; currency",
            },
            "limits": {"type": "object", "description": "imaged 0.1's form of accepts"},
            "price_per_image": {"type": "number"},
            "currency": {"type": "string"},
        },
    }
    schemas.update(openai_schemas())
    return {
        "schemas": schemas,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key (`imaged keys add`, or IMAGED_API_KEYS) or a JWT (HS256/RS256)",
            }
        },
    }


def _events_op() -> dict[str, Any]:
    return {
        "operationId": "taskEvents",
        "summary": "A task's events as Server-Sent Events: its story so far, then live ones until terminal",
        "description": "Each event's `id` is its event_id; send it back as `Last-Event-ID` to resume after it. "
        "Progress events are live only. A comment line every 15 s keeps the stream open.",
        "security": _SECURED,
        "parameters": [
            _TASK_ID_PARAM,
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "the stream (event: the event's type; data: the event)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_AUTH_ERRORS,
            "404": _error("no such task (or another tenant's)"),
        },
    }


SEED_EXAMPLE = {
    "model": "wanx2.1-t2i-turbo",
    "provider": "aliyun",
    "parameters": {
        "prompt": "一只可爱的小猫咪在草地上玩耍",
        "negative_prompt": "模糊, 扭曲, 低质量",
        "size": "1024*1024",
        "n": 1,
    },
    "is_async": True,
}


@functools.cache
def openapi_document(models: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the routes in ``api.ROUTES`` (a test keeps the two in step); ``models`` are the
    catalog's model names, listed as the allowed values of ``model``."""
    components = _components()
    if models:
        components["schemas"]["Request"]["properties"]["model"]["enum"] = list(models)
    create = {
        "operationId": "createTask",
        "summary": "Create a task (the original service's body); it goes through the request queue",
        "description": 'With `"is_async": false` the call waits up to IMAGED_SYNC_WAIT_S for the result.',
        "security": _SECURED,
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("Request"), "example": SEED_EXAMPLE}},
        },
        "responses": {
            "200": _envelope_schema(
                {"anyOf": [_ref("TaskStatus"), _ref("TaskResult")]}, "created (or, when waiting, finished)"
            ),
            "400": _error("the body is not a JSON object"),
            **_AUTH_ERRORS,
            "409": _error("the task_id belongs to another task"),
            "413": _error("the body is larger than IMAGED_MAX_REQUEST_BYTES"),
            "422": _error("the request or its parameters are invalid"),
            "429": _error("too many tasks created; see Retry-After"),
            "503": _error("the broker is not available"),
        },
    }
    listing = {
        "operationId": "listTasks",
        "summary": "The caller's tasks, newest first",
        "security": _SECURED,
        "parameters": [
            {"name": "status", "in": "query", "schema": {"enum": [s.value for s in Status]}},
            {
                "name": "limit",
                "in": "query",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": LIST_MAX_LIMIT,
                    "default": LIST_DEFAULT_LIMIT,
                },
            },
            {
                "name": "offset",
                "in": "query",
                "schema": {"type": "integer", "minimum": 0, "maximum": LIST_MAX_OFFSET, "default": 0},
            },
        ],
        "responses": {
            "200": _envelope_schema(_ref("TaskList"), "one page of tasks"),
            "400": _error("a bad filter or page"),
            **_AUTH_ERRORS,
        },
    }

    def task_op(op_id: str, summary: str, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "operationId": op_id,
            "summary": summary,
            "security": _SECURED,
            "parameters": [_TASK_ID_PARAM],
            "responses": {
                "200": _envelope_schema(results, "the task"),
                **_AUTH_ERRORS,
                "404": _error("no such task (or another tenant's)"),
                **extra,
            },
        }

    cancel = task_op(
        "cancelTask", "Cancel a task", _ref("TaskStatus"), {"409": _error("the task has finished")}
    )
    cancel["responses"]["202"] = _envelope_schema(_ref("TaskStatus"), "cancel requested")
    del cancel["responses"]["200"]
    health = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imaged",
            "version": __version__,
            "description": "Image-generation tasks: create, follow (also as Server-Sent Events), list, cancel; models; "
            "health and metrics; and the OpenAI-compatible images API under /v1.",
        },
        "paths": {
            "/api/v1/tasks/": {"post": create, "get": {**listing, "operationId": "listTasksSlash"}},
            "/api/v1/tasks": {"post": {**create, "operationId": "createTaskNoSlash"}, "get": listing},
            "/api/v1/tasks/{task_id}/status": {
                "get": task_op("getTaskStatus", "A task's status", _ref("TaskStatus"), {})
            },
            "/api/v1/tasks/{task_id}/result": {
                "get": task_op(
                    "getTaskResult", "A task's result (the original envelope)", _ref("TaskResult"), {}
                )
            },
            "/api/v1/tasks/{task_id}/cancel": {"post": cancel},
            "/api/v1/tasks/{task_id}/events": {"get": _events_op()},
            "/api/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The model catalog",
                    "security": _SECURED,
                    "responses": {
                        "200": _envelope_schema({"type": "array", "items": _ref("Model")}, "the models"),
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
            "/health/live": {
                "get": {
                    "operationId": "live",
                    "summary": "Liveness",
                    "responses": {
                        "200": {"description": "alive", "content": {"application/json": {"schema": health}}}
                    },
                }
            },
            "/health/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: broker, database, consumers",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": health}}},
                        "503": {
                            "description": "not ready",
                            "content": {"application/json": {"schema": health}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus exposition",
                    "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
                }
            },
            **openai_paths(),
        },
        "components": components,
    }
