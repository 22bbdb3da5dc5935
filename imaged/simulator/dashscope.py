"""The DashScope (Alibaba Model Studio, Tongyi Wanxiang) image API, as providers.md §1 and "Model families, 2026"
describe it.

Served under `/api/v1`: the classic submits (text2image and image2image, asynchronous; wan2.2 also answers a
synchronous call), the messages-protocol submit (`image-generation`, wan2.6), task query and task cancel. Which
model goes where and what it accepts is `dashscope_models`. Shapes, codes and messages follow the real service
closely enough for the official `dashscope` SDK to work.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from aiohttp import web

from .config import key_label
from .dashscope_models import (
    MODELS,
    SEED_MAX,
    ApiError,
    Endpoint,
    Job,
    parse_classic,
    parse_messages,
    request_id,
)
from .faults import hold, retry_after_header
from .images import ImageName, fill_for
from .state import SimState, SimTask

BASE = "/api/v1"
PROVIDER: Final = "aliyun"
PENDING_SHARE = 0.2
"""Share of a task's time spent PENDING (cancellable) before it turns RUNNING."""
URL_LIFETIME = 24 * 3600
CHINA = timezone(timedelta(hours=8))
PATHS: dict[Endpoint, str] = {
    "text2image": f"{BASE}/services/aigc/text2image/image-synthesis",
    "image2image": f"{BASE}/services/aigc/image2image/image-synthesis",
    "image-generation": f"{BASE}/services/aigc/image-generation/generation",
}
UNREACHABLE = ("InternalError.Algo.InvalidParameter", "Failed to download multimodal content")


def fault_error(status: int, retry_after: float | None) -> web.StreamResponse:
    """DashScope's answer to an injected HTTP 429 or 500."""
    if status == 429:
        headers = retry_after_header(retry_after)
        message = "Requests rate limit exceeded, please try again later."
        return ApiError(429, "Throttling.RateQuota", message, headers).response()
    return ApiError(500, "InternalError", "An internal error has occured, please try again later.").response()


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
        submits = (self.submit_text2image, self.submit_image2image, self.submit_messages)
        return [
            *(
                web.post(path, guard(PROVIDER, "submit", handler, fault_error))
                for path, handler in zip(PATHS.values(), submits, strict=True)
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

    async def submit_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, "image-generation")

    async def _submit(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        state = self.state
        try:
            label = self._credential(request)
            text = await request.text()
            synchronous = request.headers.get("X-DashScope-Async", "").strip().lower() != "enable"
            if synchronous and not _answers_synchronously(text, endpoint):
                raise ApiError(403, "AccessDenied", "current user api does not support synchronous calls")
            if not state.submit_allowed(PROVIDER, label):
                raise ApiError(
                    429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
                )
            try:
                job = self._parse(text, endpoint)
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
            extras={
                "prompt_extend": job.prompt_extend,
                "function": job.function,
                "interleave": job.interleave,
            },
        )
        if synchronous:  # wan2.2: the answer comes when the task has ended, in the shape of a poll answer
            await hold(state.closing, max(0.0, task.ends - time.monotonic()))
            return web.json_response(self._render(request, task, time.monotonic()))
        return web.json_response(
            {"output": {"task_status": "PENDING", "task_id": task.id}, "request_id": request_id()}
        )

    def _parse(self, text: str, endpoint: Endpoint) -> Job:
        """A checked submit body; an input image the settings mark unreachable fails like a failed download."""
        try:
            body = json.loads(text)
        except ValueError:
            raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from None
        seed = self.state.rng.randint(0, SEED_MAX)
        config = self.state.config
        if endpoint == "image-generation":
            job = parse_messages(body, seed, config)
        else:
            job = parse_classic(body, endpoint, seed, config)
        if any(url.startswith("http") and config.unreachable(url) for url in job.inputs):
            raise ApiError(400, *UNREACHABLE)
        return job

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
            return web.json_response({"request_id": request_id(), "output": output})
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
        return web.json_response({"request_id": request_id()})

    def _render(self, request: web.Request, task: SimTask, now: float) -> dict[str, Any]:
        """A poll answer: the classic shape (`results`), or the messages shape (`choices`) for image-generation.

        Both protocols share the PENDING/RUNNING, FAILED and CANCELED shapes, except that the messages protocol
        reports no `task_metrics` while the task runs.
        """
        status = task_status(self.state, task, now)
        messages = task.kind == "image-generation"
        output: dict[str, Any] = {
            "task_id": task.id,
            "task_status": status,
            "submit_time": _fmt(task.submitted_at),
        }
        metrics = {"TOTAL": task.count, "SUCCEEDED": 0, "FAILED": 0}
        scheduled = task.started + PENDING_SHARE * task.duration
        if status != "PENDING" and (task.canceled_at is None or task.canceled_at > scheduled):
            output["scheduled_time"] = _fmt(task.wall(scheduled))
        answer: dict[str, Any] = {"request_id": request_id(), "output": output}
        if status in ("PENDING", "RUNNING"):
            if not messages:
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
        delivered = task.count - len(outcome.failed)
        urls = {
            index: self._url(request, task, index)
            for index in range(task.count)
            if index not in outcome.failed
        }
        if messages:
            output["finished"] = True
            output["choices"] = [_choice(url, index, task) for index, url in urls.items()]
            answer["usage"] = {
                "image_count": delivered,
                "size": f"{task.width}*{task.height}",
                "input_tokens": 0,
                "output_tokens": 0,
                "total_tokens": 0,
            }
            return answer
        results: list[dict[str, Any]] = []
        for index in range(task.count):
            if index not in urls:
                results.append(
                    {
                        "code": "InternalError.Timeout",
                        "message": "An internal timeout error has occured during execution, please try again "
                        "later or contact service support.",
                    }
                )
                continue
            entry: dict[str, Any] = {"url": urls[index]}
            if task.kind == "text2image":
                entry = {"orig_prompt": task.prompt, **entry}
                if task.extras.get("prompt_extend"):
                    entry["actual_prompt"] = f"{task.prompt}，画面细节丰富，光影柔和，高清"
            results.append(entry)
        output["results"] = results
        output["task_metrics"] = {**metrics, "SUCCEEDED": delivered, "FAILED": len(outcome.failed)}
        answer["usage"] = {"image_count": delivered}
        return answer

    def _url(self, request: web.Request, task: SimTask, index: int) -> str:
        noise = self.state.config.image_fill == "noise"
        name = ImageName(
            PROVIDER, task.id, index, task.width, task.height, fill_for(task.seeds[index], noise)
        )
        return _signed_url(self.state.image_base(request), name.render(), task.wall(task.ends))


def _answers_synchronously(text: str, endpoint: Endpoint) -> bool:
    """Whether a submit without the async header is served (wan2.2 on text2image) rather than refused."""
    if endpoint != "text2image":
        return False
    try:
        body = json.loads(text)
    except ValueError:
        return False
    name = body.get("model") if isinstance(body, dict) else None
    model = MODELS.get(name) if isinstance(name, str) else None
    return model is not None and model.sync


def _choice(url: str, index: int, task: SimTask) -> dict[str, Any]:
    """One `output.choices` entry of the messages protocol: one delivered image (after a caption when
    interleaved)."""
    content: list[dict[str, str]] = [{"type": "image", "image": url}]
    if task.extras.get("interleave"):
        content.insert(0, {"type": "text", "text": f"Image {index + 1}"})
    return {"finish_reason": "stop", "message": {"role": "assistant", "content": content}}


def _signed_url(base: str, name: str, made_at: float) -> str:
    """An image URL shaped like a signed object-storage URL (valid 24 h from when the image was made)."""
    expires = int(made_at) + URL_LIFETIME
    signature = hashlib.sha1(f"{name}{expires}".encode()).hexdigest()[:24]
    return f"{base}/_sim/images/{name}?Expires={expires}&OSSAccessKeyId=sim&Signature={signature}"


def _fmt(wall: float) -> str:
    """`2025-01-08 16:03:59.840`: the providers' own time format (China time)."""
    return datetime.fromtimestamp(wall, CHINA).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
