"""The OpenAI-compatible routes (``/v1``) in the OpenAPI document (``openapi.py``): their shapes as the OpenAI SDK
sends and reads them, and the ``Idempotency-Key`` header every task-creating POST honours."""

from __future__ import annotations

from typing import Any

_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _openai_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("OpenAIError")}}}


def openai_schemas() -> dict[str, Any]:
    """The shapes of the OpenAI-compatible routes (``/v1``), as the OpenAI SDK sends and reads them."""
    images_fields: dict[str, Any] = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
        "model": {"type": "string", "description": "a model of GET /v1/models (IMAGED_OPENAI_DEFAULT_MODEL)"},
        "n": {"type": "integer", "minimum": 1, "maximum": 16},
        "size": {"type": "string", "description": "WIDTHxHEIGHT (1024x1024), a size tier (2K), or auto"},
        "response_format": {"enum": ["url", "b64_json"], "default": "url"},
        "user": {"type": "string", "maxLength": 256, "description": "kept in the task's metadata"},
        "quality": {"description": "accepted and ignored"},
        "style": {"description": "accepted and ignored"},
    }
    return {
        "OpenAIImagesRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": images_fields,
            "additionalProperties": {
                "description": "any other field is a parameter of the model (negative_prompt, seed, "
                "prompt_extend, watermark, LiblibAI's fields), checked as in a task's parameters"
            },
        },
        "OpenAIImagesEdit": {
            "type": "object",
            "required": ["image", "prompt"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "or image[], several"},
                "mask": {"type": "string", "format": "binary"},
                **images_fields,
            },
        },
        "OpenAIImagesResponse": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {"type": "integer"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "url": {
                                "type": "string",
                                "description": "imaged's own copy, never the provider's",
                            },
                            "b64_json": {"type": "string"},
                            "revised_prompt": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "OpenAIModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "owned_by"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string", "description": "the provider"},
                        },
                    },
                },
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "code": {"type": ["string", "null"]},
                        "param": {"type": ["string", "null"]},
                    },
                }
            },
        },
    }


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "the same key from the same tenant attaches to the same task (a retry never pays twice); "
    "the key again with another body is 409",
    "schema": {"type": "string", "maxLength": 256},
}


def openai_paths() -> dict[str, Any]:
    failures = {
        "400": _openai_error("invalid request or content policy (x-should-retry: false)"),
        "401": _openai_error("missing or invalid credentials"),
        "404": _openai_error("no such model"),
        "409": _openai_error("the Idempotency-Key was used with another body"),
        "413": _openai_error("an upload larger than IMAGED_OPENAI_MAX_UPLOAD_BYTES"),
        "429": _openai_error("too many requests; see Retry-After"),
        "502": _openai_error("the provider failed the task"),
        "504": _openai_error("not ready within IMAGED_OPENAI_WAIT_S (a retry waits for the same task)"),
    }
    answer = {
        "description": "the images",
        "content": {"application/json": {"schema": _ref("OpenAIImagesResponse")}},
    }

    def images(op_id: str, summary: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "operationId": op_id,
            "summary": summary,
            "description": "Creates an ordinary task and waits for it up to IMAGED_OPENAI_WAIT_S.",
            "security": _SECURED,
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": content},
            "responses": {"200": answer, **failures},
        }

    return {
        "/v1/images/generations": {
            "post": images(
                "openaiImagesGenerate",
                "Generate images (OpenAI's request and answer)",
                {"application/json": {"schema": _ref("OpenAIImagesRequest")}},
            )
        },
        "/v1/images/edits": {
            "post": images(
                "openaiImagesEdit",
                "Edit images, or image to image (multipart, as the OpenAI SDK sends it)",
                {"multipart/form-data": {"schema": _ref("OpenAIImagesEdit")}},
            )
        },
        "/v1/models": {
            "get": {
                "operationId": "openaiListModels",
                "summary": "The available models, in OpenAI's shape",
                "security": _SECURED,
                "responses": {
                    "200": {
                        "description": "the models",
                        "content": {"application/json": {"schema": _ref("OpenAIModelList")}},
                    },
                    "401": failures["401"],
                },
            }
        },
        "/v1/files/{name}": {
            "get": {
                "operationId": "imageFile",
                "summary": "A local image file, by the signed link an answer gave (no credential needed)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "the image", "content": {"image/*": {}}},
                    "404": {"description": "no such file, or the link is forged or expired"},
                },
            }
        },
    }
