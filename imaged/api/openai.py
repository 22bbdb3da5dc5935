"""The OpenAI-compatible images API (``/v1``), so that the OpenAI SDK and its kin work unchanged.

``POST /v1/images/generations`` and ``POST /v1/images/edits`` create ordinary imaged tasks (events, limits,
retries, webhooks all apply), wait for them up to ``IMAGED_OPENAI_WAIT_S`` and answer
``{"created", "data": [{"url" | "b64_json", "revised_prompt"}]}``. A ``url`` is imaged's own copy (a bucket's
link, or a signed link to this API for local files), never the provider's expiring one. ``GET /v1/models`` lists
the catalog. Errors take OpenAI's shape (``http.openai_error``) and tell the SDK when a retry cannot help.

OpenAI's ``quality``, ``style``, ``background``, ``moderation`` and ``output_format`` are accepted and ignored
(no provider here has them); ``user`` is kept in the task's metadata. Any other field of the body is a parameter
of the model (``negative_prompt``, ``seed``, LiblibAI's fields...), checked like any request's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..auth import Principal
from ..catalog import ModelSpec
from ..contract import ErrorCategory, Request, Status
from ..errors import DownloadError, InvalidRequest, StorageError
from ..image_format import sniff
from ..intake import TaskIdTaken, describe_validation_error
from ..task import Task
from .context import LIMITER_KEY, ApiDeps, authenticate, deps
from .http import ApiError, openai_error, read_json_object
from .idempotency import attach, check_same_request
from .links import image_link
from .tasks import submit, wait_for_terminal

log = logging.getLogger(__name__)

#: OpenAI fields with no counterpart here: accepted so that requests written for OpenAI work, then dropped
IGNORED = (
    "quality",
    "style",
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "partial_images",
)
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")
#: a form field of /v1/images/edits longer than this is refused
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
#: an uploaded image wider or taller than this is refused
UPLOAD_SIDE_MAX = 16384
MAX_UPLOADS = 16
#: a form holds at most this many uploads' worth of bytes in all (each upload is capped on its own too)
FORM_UPLOADS_WORTH = 4
#: b64_json answers carry images of at most this many bytes each
MAX_B64_IMAGE_BYTES = 32 * 1024 * 1024
#: and at most this many bytes of images in all (beyond: ask for urls; the same request attaches to its task)
MAX_B64_TOTAL_BYTES = 64 * 1024 * 1024


class ImagesRequest(BaseModel):
    """The OpenAI request fields imaged reads; every other field is the model's own parameter."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = Field(None, max_length=128)
    n: int | None = Field(None, ge=1, le=16)
    size: str | None = Field(None, max_length=32)
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = Field(None, max_length=256)


async def generations(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    who = await _authenticated(request)
    body = await read_json_object(request)
    return await _create(request, d, who, body, images=[], mask=None)


async def edits(request: web.Request) -> web.StreamResponse:
    """Multipart, as the SDK sends it: ``image`` (or ``image[]``, several), ``mask``, and the fields."""
    d = deps(request)
    who = await _authenticated(request)
    fields, uploads = await _read_multipart(request, d.settings.openai_max_upload_bytes)
    images = [data for name, data in uploads if name in ("image", "image[]")]
    masks = [data for name, data in uploads if name == "mask"]
    if not images:
        raise ApiError(400, "image: at least one image file is required")
    return await _create(request, d, who, fields, images=images, mask=masks[0] if masks else None)


async def models(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    await authenticate(request)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": spec.provider}
        for name in d.catalog.names()
        if (spec := d.catalog.get(name)) is not None and spec.provider in d.providers
    ]
    return web.json_response({"object": "list", "data": data})


async def _authenticated(request: web.Request) -> Principal:
    who = await authenticate(request)
    wait_s = request.app[LIMITER_KEY].take(who.rate_key)
    if wait_s > 0:
        raise ApiError(
            429, "too many images requested: slow down", {"Retry-After": str(max(1, math.ceil(wait_s)))}
        )
    return who


async def _create(
    request: web.Request,
    d: ApiDeps,
    who: Principal,
    body: dict[str, Any],
    *,
    images: list[bytes],
    mask: bytes | None,
) -> web.StreamResponse:
    try:
        parsed = ImagesRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc)) from None
    spec = _model(d, parsed.model)
    # Hashing and encoding megabytes run in a worker thread, not on the event loop every request shares.
    files = [*images, *([mask] if mask is not None else [])]
    uploads = await asyncio.to_thread(lambda: [_digest(data) for data in files])
    # How the answer is shaped is not part of the request: asking again for urls attaches to the same task.
    asked = {k: v for k, v in body.items() if k != "response_format"}
    attached = await attach(request, d.tasks, who.tenant, {**asked, "uploads": uploads}, None)
    if attached.existing is None or attached.existing.status is Status.PENDING:
        urls = [
            await _upload(request, d, data, digest) for data, digest in zip(images, uploads, strict=False)
        ]
        mask_url = await _upload(request, d, mask, uploads[-1]) if mask is not None else None
        req = _task_request(d, spec, parsed, urls, mask_url)
        try:
            submitted = await submit(d, req, attached.task_id, who, attached.fingerprint)
        except (TaskIdTaken, InvalidRequest) as exc:
            return openai_error(400, exc.message, code="invalid_request", retry=False)
        check_same_request(submitted.task, attached)
    task = await wait_for_terminal(d, attached.task_id, d.settings.openai_wait_s)
    if task is None:
        return openai_error(
            504,
            f"the images are not ready yet (task {attached.task_id}); a retry of this request waits for the same task",
            code="timeout",
            retry=True,
        )
    return await _answer(request, d, task, parsed.response_format or "url")


def _model(d: ApiDeps, name: str | None) -> ModelSpec:
    chosen = name or d.settings.openai_default_model
    if chosen is None:
        raise ApiError(400, "model: required (no IMAGED_OPENAI_DEFAULT_MODEL is set)")
    spec = d.catalog.get(chosen)
    if spec is None or spec.provider not in d.providers:
        raise ApiError(404, f"model {chosen[:128]!r} does not exist here: GET /v1/models lists the models")
    return spec


def _size(spec: ModelSpec, size: str | None) -> tuple[int, int] | str | None:
    if size is None or size == "auto":
        return None
    if spec.accepts.size is not None and size in spec.accepts.size.tiers:
        return size
    match = _SIZE.match(size)
    if match is None:
        raise ApiError(400, f"size: expected 'WIDTHxHEIGHT' (e.g. 1024x1024) or 'auto' (got {size[:32]!r})")
    return int(match.group(1)), int(match.group(2))


def _task_request(
    d: ApiDeps, spec: ModelSpec, parsed: ImagesRequest, images: list[str], mask: str | None
) -> Request:
    if d.openai_parameters is None:
        raise ApiError(503, "the OpenAI-compatible API is not available here")
    params = d.openai_parameters(
        spec, prompt=parsed.prompt, n=parsed.n, size=_size(spec, parsed.size), images=images, mask=mask
    )
    extras = {k: v for k, v in (parsed.model_extra or {}).items() if k not in IGNORED}
    params.update(extras)
    metadata = {"user": parsed.user} if parsed.user else {}
    try:
        return Request(model=spec.name, parameters=params, metadata=metadata)
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc)) from None


async def _answer(request: web.Request, d: ApiDeps, task: Task, response_format: str) -> web.StreamResponse:
    if task.status is not Status.COMPLETED:
        return _task_error(task)
    result = task.result or {}
    data = []
    b64_bytes = 0
    for image in result.get("images", []):
        entry: dict[str, Any] = {"revised_prompt": result.get("actual_prompt") or result.get("prompt")}
        storage_url = image.get("storage_url") or _file_url(image.get("local_path"))
        if d.images is None or storage_url is None:
            raise ApiError(500, "the image store is not available")
        try:
            if response_format == "b64_json":
                raw = await d.images.read(storage_url, MAX_B64_IMAGE_BYTES)
                b64_bytes += len(raw)
                if b64_bytes > MAX_B64_TOTAL_BYTES:
                    return openai_error(
                        400,
                        f"the images are more than {MAX_B64_TOTAL_BYTES // 2**20} MiB in all: too large for "
                        f"b64_json; ask for response_format=url with the same Idempotency-Key (task {task.id})",
                        code="response_too_large",
                        retry=False,
                    )
                entry["b64_json"] = (await asyncio.to_thread(base64.b64encode, raw)).decode()
            else:
                entry["url"] = await image_link(
                    request, d.images, storage_url, key=d.link_key, ttl_s=d.settings.file_link_ttl_s
                )
        except StorageError as exc:
            return openai_error(
                502, f"image {image.get('index')}: {exc}", code="image_unavailable", retry=False
            )
        data.append(entry)
    created = int((task.finished_at or task.created_at).timestamp())
    return web.json_response({"created": created, "data": data})


# A failed task stays failed: retrying the same request attaches to it again, so no retry helps.
_FAILURES: dict[ErrorCategory, tuple[int, str]] = {
    ErrorCategory.INVALID_REQUEST: (400, "invalid_request"),
    ErrorCategory.CONTENT_POLICY: (400, "content_policy_violation"),
    ErrorCategory.CANCELED: (409, "canceled"),
    ErrorCategory.TIMEOUT: (504, "timeout"),
    ErrorCategory.RATE_LIMITED: (429, "rate_limited"),
}


def _task_error(task: Task) -> web.StreamResponse:
    error = task.error or {}
    try:
        category = ErrorCategory(str(error.get("category")))
    except ValueError:
        category = ErrorCategory.INTERNAL
    status, code = _FAILURES.get(category, (502, category.value))
    message = f"{error.get('message') or 'the task failed'} (task {task.id})"
    return openai_error(status, message, code=code, retry=False)


def _file_url(path: Any) -> str | None:
    return f"file://{path}" if isinstance(path, str) and path.startswith("/") else None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _upload(request: web.Request, d: ApiDeps, data: bytes, digest: str) -> str:
    """An uploaded input image, kept in the image store, as a URL the provider can fetch (imaged never does).

    Named by its content (``input_<sha256>``): the same image uploaded twice, by concurrent retries or by two
    tasks, is the same object, and no request can replace another's input.
    """
    kind = sniff(data[:64])
    if kind is None:
        raise ApiError(400, "image: not a PNG, JPEG, GIF or WebP image")
    if d.images is None:
        raise ApiError(503, "the image store is not available")
    ext, content_type = kind
    writer = d.images.writer(f"input_{digest[:32]}.{ext}", content_type)
    try:
        await writer.write(data)
        stored = await writer.commit(side_max=UPLOAD_SIDE_MAX, size=None)
    except DownloadError as exc:
        await writer.abort()
        if exc.code == "storage_error":  # the store failed, not the upload
            raise ApiError(
                503, f"the image store is not available: {exc.message}", {"Retry-After": "5"}
            ) from None
        raise ApiError(400, f"image: {exc.message}") from None  # unreadable, or too large an image
    except (StorageError, OSError) as exc:
        await writer.abort()
        raise ApiError(
            503, f"the image store is not available: {type(exc).__name__}", {"Retry-After": "5"}
        ) from None
    except BaseException:
        await writer.abort()
        raise
    link = await image_link(
        request, d.images, stored.storage_url, key=d.link_key, ttl_s=d.settings.file_link_ttl_s
    )
    if link is None:
        raise ApiError(503, "the image store gives no link a provider could fetch the input from")
    return link


async def _read_multipart(
    request: web.Request, max_upload: int
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The form fields (JSON-decoded where they are JSON: numbers, booleans, objects) and the uploaded files."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "expected a multipart/form-data body (image, prompt, ...)")
    try:
        return await _parse_multipart(request, max_upload)
    except (HttpProcessingError, ValueError) as exc:  # a malformed body (its bytes are not echoed)
        raise ApiError(
            400,
            f"the multipart body cannot be read (malformed part headers or boundary: {type(exc).__name__})",
        ) from None


async def _parse_multipart(
    request: web.Request, max_upload: int
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    uploads: list[tuple[str, bytes]] = []
    total = FORM_UPLOADS_WORTH * max_upload
    budget, parts = total, 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise ApiError(400, "nested multipart bodies are not accepted")
        parts += 1  # every part counts, named alike or not
        if part.filename is None and parts - len(uploads) > MAX_FIELDS:
            raise ApiError(400, f"at most {MAX_FIELDS} form fields")
        if part.filename is not None and len(uploads) >= MAX_UPLOADS:
            raise ApiError(400, f"at most {MAX_UPLOADS} files")
        own_limit = max_upload if part.filename is not None else MAX_FIELD_BYTES
        data = await _read_part(part, min(own_limit, budget), in_all=(total if budget < own_limit else None))
        budget -= len(data)
        if part.filename is not None:
            uploads.append((part.name, data))
            continue
        text = data.decode("utf-8", errors="replace")
        try:
            fields[part.name] = (
                json.loads(text) if part.name not in ("prompt", "model", "size", "user") else text
            )
        except ValueError:
            fields[part.name] = text
    return fields, uploads


async def _read_part(part: BodyPartReader, limit: int, in_all: int | None) -> bytes:
    """The part's bytes, at most ``limit``; ``in_all``: the limit is what is left of the form's total."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            if in_all is not None:
                raise ApiError(413, f"the form is larger than {in_all} bytes in all")
            raise ApiError(413, f"{part.name}: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
