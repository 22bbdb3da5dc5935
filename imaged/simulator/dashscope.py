"""The DashScope (Alibaba Model Studio, Tongyi Wanxiang) image-synthesis API, as providers.md §1 describes it.

Served under `/api/v1`: submit (text2image and image2image, asynchronous only), task query, task cancel.
Shapes, codes and messages follow the real service closely enough for the official `dashscope` SDK to work.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Literal

from aiohttp import web

from .config import key_label
from .faults import retry_after_header
from .images import ImageName, fill_for
from .state import SimState, SimTask

BASE = "/api/v1"
PROVIDER: Final = "aliyun"
T2I_MODELS = frozenset(
    {
        "wanx2.1-t2i-turbo",
        "wanx2.1-t2i-plus",
        "wanx2.0-t2i-turbo",
        "wan2.2-t2i-flash",
        "wan2.2-t2i-plus",
        "wanx-v1",
    }
)
I2I_MODELS = frozenset({"wanx2.1-imageedit"})
EDIT_FUNCTIONS = frozenset(
    {
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "remove_watermark",
    }
)
WANX_V1_SIZES = frozenset({"1024*1024", "720*1280", "1280*720"})
SIDE_MIN, SIDE_MAX = 512, 1440
PROMPT_MAX, NEGATIVE_MAX = 800, 500
SEED_MAX = 2147483647
PENDING_SHARE = 0.2
"""Share of a task's time spent PENDING (cancellable) before it turns RUNNING."""
URL_LIFETIME = 24 * 3600
CHINA = timezone(timedelta(hours=8))
_SIZE = re.compile(r"^(\d{1,5})\*(\d{1,5})$")

Endpoint = Literal["text2image", "image2image"]


class ApiError(Exception):
    """A DashScope error answer: HTTP status plus `{code, message, request_id}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        body = {"code": self.code, "message": self.message, "request_id": _request_id()}
        return web.json_response(body, status=self.status, headers=self.headers)


def fault_error(status: int, retry_after: float | None) -> web.StreamResponse:
    """DashScope's answer to an injected HTTP 429 or 500."""
    if status == 429:
        headers = retry_after_header(retry_after)
        message = "Requests rate limit exceeded, please try again later."
        return ApiError(429, "Throttling.RateQuota", message, headers).response()
    return ApiError(500, "InternalError", "An internal error has occured, please try again later.").response()


@dataclass
class Job:
    """A validated submit."""

    model: str
    prompt: str
    width: int
    height: int
    n: int
    seed: int
    prompt_extend: bool
    function: str | None = None


def parse_submit(body: Any, endpoint: Endpoint, seed_default: int) -> Job:
    """Check a submit body as the real API does; raises ApiError with the real codes."""
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidParameter", "The request body must be a JSON object.")
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.')
    if not isinstance(model, str):
        raise ApiError(400, "InvalidParameter", "Parameter model must be a string.")
    if model not in T2I_MODELS | I2I_MODELS:
        raise ApiError(404, "ModelNotFound", f"Model not found ({model})!")
    if model not in (T2I_MODELS if endpoint == "text2image" else I2I_MODELS):
        raise ApiError(400, "InvalidParameter", f"Model {model} does not support the {endpoint} task.")
    inputs = body.get("input")
    if not isinstance(inputs, dict) or not inputs:
        raise ApiError(400, "BadRequest.EmptyInput", 'Required parameter "input" missing from request.')
    prompt = inputs.get("prompt")
    if prompt is None or prompt == "":
        raise ApiError(400, "InvalidParameter", "Field required: input.prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "InvalidParameter", "Input should be a valid string: input.prompt")
    negative = inputs.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ApiError(400, "InvalidParameter", "Input should be a valid string: input.negative_prompt")
    if negative is not None and len(negative) > NEGATIVE_MAX:
        raise ApiError(400, "InvalidParameter", f"input.negative_prompt exceeds {NEGATIVE_MAX} characters.")
    params = body.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(400, "InvalidParameter", "parameters must be a JSON object.")

    function = None
    if endpoint == "image2image":
        function = inputs.get("function")
        if function not in EDIT_FUNCTIONS:
            allowed = ", ".join(sorted(EDIT_FUNCTIONS))
            raise ApiError(400, "InvalidParameter", f"input.function must be one of: {allowed}")
        _check_url(inputs, "base_image_url", required=True)
        _check_url(inputs, "mask_image_url", required=function == "description_edit_with_mask")
    width, height = _size(params.get("size"), model)
    n = params.get("n", 4 if endpoint == "text2image" else 1)
    if not _is_int(n) or not 1 <= n <= 4:
        raise ApiError(400, "InvalidParameter", "The n parameter must be an integer in [1, 4].")
    seed = params.get("seed", seed_default)
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise ApiError(400, "InvalidParameter", f"The seed parameter must be an integer in [0, {SEED_MAX}].")
    for flag in ("prompt_extend", "watermark"):
        if flag in params and not isinstance(params[flag], bool):
            raise ApiError(400, "InvalidParameter", f"The {flag} parameter must be a boolean.")
    return Job(
        model=model,
        prompt=prompt[:PROMPT_MAX],  # the real service truncates long prompts silently
        width=width,
        height=height,
        n=n,
        seed=seed,
        prompt_extend=params.get("prompt_extend", True) and endpoint == "text2image",
        function=function,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_url(inputs: dict[str, Any], name: str, *, required: bool) -> None:
    """Check that an input image is an http(s) URL; the emulator never fetches it."""
    value = inputs.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, "InvalidParameter", f"Field required: input.{name}")
        return
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ApiError(400, "InvalidURL", f"The input.{name} is not a valid http(s) URL.")


def _size(value: Any, model: str) -> tuple[int, int]:
    if value is None:
        return 1024, 1024
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(
            400, "InvalidParameter", f"The size parameter must look like 1024*1024, got {value!r}."
        )
    width, height = int(match.group(1)), int(match.group(2))
    if model == "wanx-v1":
        if value not in WANX_V1_SIZES:
            allowed = ", ".join(sorted(WANX_V1_SIZES))
            raise ApiError(
                400, "InvalidParameter", f"The size {value} is not supported; use one of {allowed}."
            )
    elif not (SIDE_MIN <= width <= SIDE_MAX and SIDE_MIN <= height <= SIDE_MAX):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The size {value} is not supported: width and height must be in [{SIDE_MIN}, {SIDE_MAX}].",
        )
    return width, height


def task_status(state: SimState, task: SimTask, now: float, *, peek: bool = False) -> str:
    """The task's `task_status` at `now`, as the provider would report it.

    ``peek`` (stats) never draws an outcome: a finished task nobody has polled yet counts as succeeded.
    """
    if task.canceled_at is not None:
        return "CANCELED"
    if not task.finished(now):
        return "PENDING" if task.progress(now) < PENDING_SHARE else "RUNNING"
    if peek and task.outcome is None:
        return "SUCCEEDED"
    return "SUCCEEDED" if state.outcome(task).kind in ("success", "partial") else "FAILED"


FAILURES = {
    "fail": ("InternalError", "An internal error has occured during execution, please try again later."),
    "moderation": ("DataInspectionFailed", "Output data may contain inappropriate content."),
    "status7": ("InternalError.Timeout", "An internal timeout error has occured during execution."),
}


class DashScope:
    """Route handlers of the DashScope API."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        guard = self.state.guarded
        return [
            web.post(
                f"{BASE}/services/aigc/text2image/image-synthesis",
                guard(PROVIDER, "submit", self.submit_text2image, fault_error),
            ),
            web.post(
                f"{BASE}/services/aigc/image2image/image-synthesis",
                guard(PROVIDER, "submit", self.submit_image2image, fault_error),
            ),
            web.get(f"{BASE}/tasks/{{task_id}}", guard(PROVIDER, "poll", self.query, fault_error)),
            web.post(f"{BASE}/tasks/{{task_id}}/cancel", guard(PROVIDER, "cancel", self.cancel, fault_error)),
        ]

    def _credential(self, request: web.Request) -> str:
        """The stats label of the request's API key; raises 401 InvalidApiKey."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            self.state.count(PROVIDER, None, "auth_failures")
            raise ApiError(401, "InvalidApiKey", "No API-key provided.")
        key = key.strip()
        if key not in self.state.config.dashscope_keys():
            self.state.count(PROVIDER, None, "auth_failures")
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
        return key_label(key)

    async def submit_text2image(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, "text2image")

    async def submit_image2image(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, "image2image")

    async def _submit(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        state = self.state
        try:
            label = self._credential(request)
            if request.headers.get("X-DashScope-Async", "").strip().lower() != "enable":
                raise ApiError(403, "AccessDenied", "current user api does not support synchronous calls")
            if not state.submit_allowed(PROVIDER, label):
                raise ApiError(
                    429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
                )
            try:
                body = json.loads(await request.text())
            except ValueError:
                state.count(PROVIDER, label, "rejected")
                raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from None
            try:
                job = parse_submit(body, endpoint, state.rng.randint(0, SEED_MAX))
            except ApiError:
                state.count(PROVIDER, label, "rejected")
                raise
            if state.faults.draw(PROVIDER, "submit", frozenset({"moderation"})) is not None:
                state.count(PROVIDER, label, "faults_injected")
                state.count(PROVIDER, label, "rejected")
                raise ApiError(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
            if not state.slot_free(PROVIDER, label):
                raise ApiError(429, "Throttling", "Requests throttling triggered: too many concurrent tasks.")
        except ApiError as exc:
            return exc.response()
        task = state.new_task(
            id=str(uuid.uuid4()),
            provider=PROVIDER,
            credential=label,
            kind=endpoint,
            model=job.model,
            width=job.width,
            height=job.height,
            seeds=[job.seed + i for i in range(job.n)],
            prompt=job.prompt,
            extras={"prompt_extend": job.prompt_extend, "function": job.function},
        )
        return web.json_response(
            {"output": {"task_status": "PENDING", "task_id": task.id}, "request_id": _request_id()}
        )

    async def query(self, request: web.Request) -> web.StreamResponse:
        try:
            label = self._credential(request)
        except ApiError as exc:
            return exc.response()
        self.state.count(PROVIDER, label, "polls")
        task_id = request.match_info["task_id"]
        task = self.state.find(PROVIDER, task_id, label)
        if task is None:
            output: dict[str, Any] = {"task_id": task_id, "task_status": "UNKNOWN"}
            return web.json_response({"request_id": _request_id(), "output": output})
        return web.json_response(self._render(request, task, time.monotonic()))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        try:
            label = self._credential(request)
            self.state.count(PROVIDER, label, "cancels")
            task = self.state.find(PROVIDER, request.match_info["task_id"], label)
            if task is None or task_status(self.state, task, time.monotonic()) != "PENDING":
                raise ApiError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
        except ApiError as exc:
            return exc.response()
        self.state.cancel(task)
        return web.json_response({"request_id": _request_id()})

    def _render(self, request: web.Request, task: SimTask, now: float) -> dict[str, Any]:
        status = task_status(self.state, task, now)
        output: dict[str, Any] = {
            "task_id": task.id,
            "task_status": status,
            "submit_time": _fmt(task.submitted_at),
        }
        metrics = {"TOTAL": task.count, "SUCCEEDED": 0, "FAILED": 0}
        scheduled = task.started + PENDING_SHARE * task.duration
        if status != "PENDING" and (task.canceled_at is None or task.canceled_at > scheduled):
            output["scheduled_time"] = _fmt(task.wall(scheduled))
        answer: dict[str, Any] = {"request_id": _request_id(), "output": output}
        if status in ("PENDING", "RUNNING"):
            output["task_metrics"] = metrics
            return answer
        output["end_time"] = _fmt(task.wall(task.ends))
        if status == "CANCELED":
            output["task_metrics"] = metrics
            return answer
        outcome = self.state.outcome(task)
        if status == "FAILED":
            output["code"], output["message"] = FAILURES.get(outcome.kind, FAILURES["fail"])
            output["task_metrics"] = {**metrics, "FAILED": task.count}
            return answer
        results: list[dict[str, Any]] = []
        base = self.state.image_base(request)
        for index, seed in enumerate(task.seeds):
            if index in outcome.failed:
                results.append(
                    {
                        "code": "InternalError.Timeout",
                        "message": "An internal timeout error has occured during execution, please try again "
                        "later or contact service support.",
                    }
                )
                continue
            name = ImageName(PROVIDER, task.id, index, task.width, task.height, fill_for(seed, self._noise))
            entry: dict[str, Any] = {"url": _signed_url(base, name.render(), task.wall(task.ends))}
            if task.kind == "text2image":
                entry = {"orig_prompt": task.prompt, **entry}
                if task.extras.get("prompt_extend"):
                    entry["actual_prompt"] = f"{task.prompt}，画面细节丰富，光影柔和，高清"
            results.append(entry)
        delivered = task.count - len(outcome.failed)
        output["results"] = results
        output["task_metrics"] = {**metrics, "SUCCEEDED": delivered, "FAILED": len(outcome.failed)}
        answer["usage"] = {"image_count": delivered}
        return answer

    @property
    def _noise(self) -> bool:
        return self.state.config.image_fill == "noise"


def _signed_url(base: str, name: str, made_at: float) -> str:
    """An image URL shaped like a signed object-storage URL (valid 24 h from when the image was made)."""
    expires = int(made_at) + URL_LIFETIME
    signature = hashlib.sha1(f"{name}{expires}".encode()).hexdigest()[:24]
    return f"{base}/_sim/images/{name}?Expires={expires}&OSSAccessKeyId=sim&Signature={signature}"


def _fmt(wall: float) -> str:
    """`2025-01-08 16:03:59.840`: the providers' own time format (China time)."""
    return datetime.fromtimestamp(wall, CHINA).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _request_id() -> str:
    return str(uuid.uuid4())
