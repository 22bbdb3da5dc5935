"""Alibaba Cloud DashScope (Model Studio), Tongyi Wanxiang: text-to-image and image editing.

Tasks are asynchronous only: submit with ``X-DashScope-Async: enable``, poll ``GET /tasks/{id}``, cancel
while ``PENDING``. API facts: ``providers.md`` §1. Parameters arrive flat (as the original service took them)
and are split into the API's ``input`` and ``parameters`` objects at submit.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

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

from ..catalog import ModelSpec
from ..contract import ErrorCategory, ErrorInfo
from ..errors import InvalidRequest, ProviderError
from ..settings import DEFAULT_ALIYUN_BASE_URL
from .base import Credential, HttpReply, PollResult, Provider, ProviderImage, ProviderState, request_json
from .params import between, check_text, limit, validate_model

log = logging.getLogger(__name__)

#: DashScope base URL per region. Keys are per region: a key on another region's URL gets 401 InvalidApiKey.
REGION_BASE_URLS: dict[str, str] = {
    "cn-beijing": DEFAULT_ALIYUN_BASE_URL,  # China (Beijing), the default
    "ap-southeast-1": "https://dashscope-intl.aliyuncs.com/api/v1",  # International (Singapore)
}

SEED_MAX = 2147483647

# --- error mapping ------------------------------------------------------------------------------------------

_EXACT_CODES: dict[str, tuple[ErrorCategory, bool]] = {
    "InvalidParameter": (ErrorCategory.INVALID_REQUEST, False),
    "InvalidURL": (ErrorCategory.INVALID_REQUEST, False),
    "ModelNotFound": (ErrorCategory.INVALID_REQUEST, False),
    "DataInspectionFailed": (ErrorCategory.CONTENT_POLICY, False),
    "IPInfringementSuspect": (ErrorCategory.CONTENT_POLICY, False),
    "Arrearage": (ErrorCategory.QUOTA, False),
    "AllocationQuota.FreeTierOnly": (ErrorCategory.QUOTA, False),
    "InvalidApiKey": (ErrorCategory.AUTH, False),
}

# Families, matched on the code or its part before the first dot (``Throttling.RateQuota`` -> ``Throttling``).
_CODE_FAMILIES: dict[str, tuple[ErrorCategory, bool]] = {
    "InvalidParameter": (ErrorCategory.INVALID_REQUEST, False),
    "BadRequest": (ErrorCategory.INVALID_REQUEST, False),
    "DataInspectionFailed": (ErrorCategory.CONTENT_POLICY, False),
    "AccessDenied": (ErrorCategory.AUTH, False),
    "Throttling": (ErrorCategory.RATE_LIMITED, True),
    "InternalError": (ErrorCategory.PROVIDER_ERROR, True),
}


def classify(code: str | None, http_status: int | None) -> tuple[ErrorCategory, bool]:
    """The category and retryability of a DashScope error code (from a reply body or a failed task).

    Unknown codes fall back on the HTTP status: 429 is rate limiting, 5xx a retryable provider fault, any
    other 4xx a permanent provider error. An unknown code in a FAILED task (HTTP 200) is a permanent provider error.
    """
    if code:
        if code in _EXACT_CODES:
            return _EXACT_CODES[code]
        family = code.split(".", 1)[0]
        if family in _CODE_FAMILIES:
            return _CODE_FAMILIES[family]
    if http_status == 429:
        return ErrorCategory.RATE_LIMITED, True
    if http_status is not None and http_status >= 500:
        return ErrorCategory.PROVIDER_ERROR, True
    return ErrorCategory.PROVIDER_ERROR, False


def error_info(code: str | None, message: str | None, http_status: int | None = None) -> ErrorInfo:
    """An :class:`ErrorInfo` for a DashScope code and message."""
    category, retryable = classify(code, http_status)
    return ErrorInfo(
        category=category,
        code=code or (f"http_{http_status}" if http_status else "unknown"),
        message=f"DashScope: {message or code or 'error'}",
        retryable=retryable,
        provider_status=http_status,
    )


def error_from_reply(reply: HttpReply, what: str) -> ProviderError:
    """The error a non-success reply means, body ``{code, message, request_id}`` or not JSON at all."""
    body = reply.body if isinstance(reply.body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), str) and body.get("code") else None
    message = body.get("message") if isinstance(body.get("message"), str) else None
    if not reply.is_json and message is None:
        message = f"{what} answered HTTP {reply.status} without a JSON body"
    info = error_info(code, message, reply.status)
    return ProviderError(
        info.message,
        code=info.code,
        category=info.category,
        retryable=info.retryable,
        provider_status=reply.status,
        retry_after=reply.retry_after,
    )


def malformed(what: str, detail: str, status: int | None = None) -> ProviderError:
    return ProviderError(
        f"{what}: malformed response ({detail})",
        code="malformed_response",
        retryable=True,
        provider_status=status,
    )


# --- task payloads ------------------------------------------------------------------------------------------

_STATES: dict[str, ProviderState] = {
    "PENDING": ProviderState.QUEUED,
    "SUSPENDED": ProviderState.QUEUED,
    "RUNNING": ProviderState.RUNNING,
    "SUCCEEDED": ProviderState.SUCCEEDED,
    "FAILED": ProviderState.FAILED,
    "CANCELED": ProviderState.CANCELED,
    "UNKNOWN": ProviderState.FAILED,
}


def _progress(output: dict[str, Any]) -> float | None:
    metrics = output.get("task_metrics")
    if not isinstance(metrics, dict):
        return None
    total, done, failed = metrics.get("TOTAL"), metrics.get("SUCCEEDED", 0), metrics.get("FAILED", 0)
    if not (isinstance(total, int) and isinstance(done, int) and isinstance(failed, int)) or total <= 0:
        return None
    return min(1.0, max(0.0, (done + failed) / total))


def parse_task(body: Any, params: dict[str, Any] | None = None) -> PollResult:
    """A ``GET /tasks/{id}`` reply (HTTP 200) as a :class:`PollResult`.

    Partial success stays SUCCEEDED with the failed entries in ``failed_images``; a SUCCEEDED task without a
    single image is FAILED with the first failed entry's code. Image ``i`` of a seeded request has seed ``seed + i``.
    """
    what = "DashScope task query"
    if not isinstance(body, dict) or not isinstance(body.get("output"), dict):
        raise malformed(what, "no 'output' object", 200)
    output: dict[str, Any] = body["output"]
    status = output.get("task_status")
    if not isinstance(status, str) or status not in _STATES:
        raise malformed(what, f"unknown task_status {status!r}", 200)
    state = _STATES[status]
    info: dict[str, Any] = {}
    if isinstance(body.get("usage"), dict):
        info["usage"] = body["usage"]

    if status == "UNKNOWN":
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="task_unknown",
            message="DashScope: task unknown or expired (tasks are kept 24 h)",
            retryable=False,
        )
        return PollResult(state=state, error=error, info=info)
    if status == "FAILED":
        code = output.get("code") if isinstance(output.get("code"), str) else None
        message = output.get("message") if isinstance(output.get("message"), str) else None
        return PollResult(state=state, progress=1.0, error=error_info(code, message), info=info)
    if status != "SUCCEEDED":
        return PollResult(state=state, progress=_progress(output), info=info)

    results = output.get("results")
    if not isinstance(results, list):
        raise malformed(what, "SUCCEEDED without a 'results' list", 200)
    base_seed = (params or {}).get("seed")
    images: list[ProviderImage] = []
    failed: list[dict[str, Any]] = []
    for position, entry in enumerate(results):
        if not isinstance(entry, dict):
            failed.append({"index": position, "code": "malformed_response", "message": "not an object"})
            continue
        url = entry.get("url")
        if isinstance(url, str) and url:
            seed = entry.get("seed")
            if not isinstance(seed, int) and isinstance(base_seed, int):
                seed = base_seed + position
            images.append(
                ProviderImage(index=len(images), url=url, seed=seed if isinstance(seed, int) else None)
            )
            if "actual_prompt" not in info and isinstance(entry.get("actual_prompt"), str):
                info["actual_prompt"] = entry["actual_prompt"]
        else:
            failed.append(
                {
                    "index": position,
                    "code": str(entry.get("code") or "no_url"),
                    "message": str(entry.get("message") or "no image in this result entry"),
                }
            )
    if images:
        return PollResult(state=state, progress=1.0, images=images, failed_images=failed, info=info)
    if failed:
        first = failed[0]
        error = error_info(first["code"], f"every image failed: {first['message']}")
    else:
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="no_images",
            message="DashScope: task SUCCEEDED without any image",
            retryable=False,
        )
    return PollResult(state=ProviderState.FAILED, progress=1.0, failed_images=failed, error=error, info=info)


# --- parameters ---------------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+)\*(\d+)$")
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
        match = _SIZE_RE.match(value)
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

_PARAMS_BY_KIND: dict[str, type[BaseModel]] = {
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


# --- the client ---------------------------------------------------------------------------------------------


class AliyunProvider(Provider):
    """DashScope asynchronous image tasks."""

    name = "aliyun"
    first_poll_delay_s = 3.0  # tasks take about 10 s
    max_poll_interval_s = 8.0
    #: per HTTP request, connection to last byte
    request_timeout_s: ClassVar[float] = 30.0

    def credentials(self) -> list[Credential]:
        """The main key, then the extra ones; each is its own account with its own limits."""
        keys = [self.settings.aliyun_api_key, *self.settings.aliyun_extra_api_keys]
        usable = [key for key in keys if key is not None and key.get_secret_value()]
        return [
            Credential(
                name=f"aliyun-{number}",
                key=key,
                secret=None,
                base_url=self.settings.aliyun_base_url.rstrip("/"),
                max_in_flight=self.settings.aliyun_max_in_flight,
            )
            for number, key in enumerate(usable, start=1)
        ]

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        model = _PARAMS_BY_KIND.get(spec.kind)
        if model is None:
            raise InvalidRequest(f"model {spec.name!r}: provider aliyun does not serve kind {spec.kind!r}")
        data = dict(parameters)
        for key, value in spec.defaults.items():
            if key in model.model_fields:
                data.setdefault(key, value)
        validated = validate_model(model, data, limits=spec.limits)
        return validated.model_dump(mode="json", exclude_none=True)

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        width = height = None
        match = _SIZE_RE.match(str(params.get("size", "")))
        if match:
            width, height = int(match.group(1)), int(match.group(2))
        described = {"prompt": params.get("prompt"), "width": width, "height": height}
        return {key: value for key, value in described.items() if value is not None}

    def _headers(self, credential: Credential, *, json_body: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {credential.key.get_secret_value()}"}
        if json_body:
            headers["Content-Type"] = "application/json"
            headers["X-DashScope-Async"] = "enable"
        return headers

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        what = "DashScope submit"
        reply = await request_json(
            self.session,
            "POST",
            f"{credential.base_url}{spec.endpoint}",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=True),
            json_body=request_body(spec, params),
        )
        log.debug("%s %s: HTTP %s", what, spec.name, reply.status)
        if reply.status != 200:
            raise error_from_reply(reply, what)
        body = reply.body
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, dict):
            if isinstance(body, dict) and isinstance(body.get("code"), str):
                raise error_from_reply(reply, what)
            raise malformed(what, "no 'output' object", reply.status)
        task_id = output.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise malformed(what, "no task_id", reply.status)
        return task_id

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        what = "DashScope task query"
        reply = await request_json(
            self.session,
            "GET",
            f"{credential.base_url}/tasks/{quote(provider_task_id, safe='')}",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=False),
        )
        if reply.status != 200:
            raise error_from_reply(reply, what)
        if not reply.is_json:
            raise malformed(what, "body is not JSON", reply.status)
        return parse_task(reply.body, params)

    async def cancel(self, credential: Credential, spec: ModelSpec, provider_task_id: str) -> bool:
        """Cancel a task still PENDING. ``False`` when DashScope refuses (the task already runs or ended)."""
        what = "DashScope cancel"
        reply = await request_json(
            self.session,
            "POST",
            f"{credential.base_url}/tasks/{quote(provider_task_id, safe='')}/cancel",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=False),
        )
        if reply.status == 200:
            return True
        error = error_from_reply(reply, what)
        if error.retryable or error.category in (ErrorCategory.AUTH, ErrorCategory.QUOTA):
            raise error
        log.info("DashScope refused to cancel task %s: %s", provider_task_id, error.message)
        return False
