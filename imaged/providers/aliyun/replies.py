"""DashScope task answers (``GET /tasks/{id}``) as :class:`PollResult`."""

from __future__ import annotations

from typing import Any

from ...contract import ErrorCategory, ErrorInfo
from ..base import PollResult, ProviderImage, ProviderState, malformed
from .errors import error_info

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
    if not isinstance(results, list) and isinstance(output.get("choices"), list):
        results = _message_results(output["choices"])
    if not isinstance(results, list):
        raise malformed(what, "SUCCEEDED without a 'results' (or 'choices') list", 200)
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


def _message_results(choices: list[Any]) -> list[Any]:
    """The messages protocol's ``choices[].message.content[]`` as classic ``results`` entries: one per image
    part (text parts of an interleaved answer are left out); a choice without an image is a failed entry."""
    results: list[Any] = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            results.append({"code": "malformed_response", "message": "a choice without message content"})
            continue
        images = [
            part["image"] for part in content if isinstance(part, dict) and isinstance(part.get("image"), str)
        ]
        results.extend({"url": url} for url in images)
        if not images:
            results.append({"code": "no_image", "message": "a choice without an image"})
    return results
