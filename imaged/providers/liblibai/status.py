"""LiblibAI status answers as :class:`PollResult`."""

from __future__ import annotations

from typing import Any

from ...contract import ErrorCategory, ErrorInfo
from ..base import PollResult, ProviderImage, ProviderState, malformed

_AUDIT_APPROVED = 3
_AUDIT_BLOCKED = 4


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return min(1.0, max(0.0, float(value)))


def parse_status(data: Any) -> PollResult:
    """The ``data`` of a status reply as a :class:`PollResult`.

    generateStatus 1 is queued, 2/3/4 running, 5 succeeded, 6 failed, 7 timed out (points refunded). Of a
    finished task only approved images are delivered; blocked ones (auditStatus 4) are recorded in
    ``failed_images``, and a task whose every image was blocked fails with ``content_policy``.
    """
    what = "LiblibAI status"
    if not isinstance(data, dict):
        raise malformed(what, "no 'data' object")
    status = data.get("generateStatus")
    if isinstance(status, bool) or not isinstance(status, int) or not 1 <= status <= 7:
        raise malformed(what, f"unknown generateStatus {status!r}")
    progress = _number(data.get("percentCompleted"))
    info = {
        key: data[key]
        for key in ("pointsCost", "accountBalance")
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool)
    }
    if status == 1:
        return PollResult(state=ProviderState.QUEUED, progress=progress, info=info)
    if status in (2, 3, 4):
        return PollResult(state=ProviderState.RUNNING, progress=progress, info=info)
    if status == 6:
        reason = data.get("generateMsg") if isinstance(data.get("generateMsg"), str) else ""
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="generate_failed",
            message=f"LiblibAI: generation failed: {reason or 'no reason given'}",
            retryable=False,
        )
        return PollResult(state=ProviderState.FAILED, progress=progress, error=error, info=info)
    if status == 7:
        error = ErrorInfo(
            category=ErrorCategory.TIMEOUT,
            code="generate_timeout",
            message="LiblibAI: the task timed out at the provider (points refunded)",
            retryable=False,
        )
        return PollResult(state=ProviderState.FAILED, progress=progress, error=error, info=info)

    images: list[ProviderImage] = []
    failed: list[dict[str, Any]] = []
    raw_images = data.get("images")
    for position, image in enumerate(raw_images if isinstance(raw_images, list) else []):
        if not isinstance(image, dict):
            failed.append({"index": position, "code": "malformed_response", "message": "not an object"})
            continue
        url = image.get("imageUrl")
        seed = image.get("seed") if isinstance(image.get("seed"), int) else None
        audit = image.get("auditStatus") if isinstance(image.get("auditStatus"), int) else None
        entry: dict[str, Any] = {"index": position, "seed": seed, "auditStatus": audit}
        if audit == _AUDIT_BLOCKED:
            failed.append(
                entry | {"code": "audit_blocked", "message": "blocked by LiblibAI's content review"}
            )
        elif audit not in (None, _AUDIT_APPROVED):
            failed.append(
                entry | {"code": "audit_not_approved", "message": f"review ended with status {audit}"}
            )
        elif not isinstance(url, str) or not url:
            failed.append(entry | {"code": "no_url", "message": "no imageUrl"})
        else:
            images.append(ProviderImage(index=len(images), url=url, seed=seed, audit_status=audit))
    if images:
        return PollResult(
            state=ProviderState.SUCCEEDED, progress=1.0, images=images, failed_images=failed, info=info
        )
    # `images` lists approved images only: a finished task with none at all had every image blocked by review.
    if not failed or any(entry.get("code") == "audit_blocked" for entry in failed):
        error = ErrorInfo(
            category=ErrorCategory.CONTENT_POLICY,
            code="audit_blocked",
            message="LiblibAI: every image was blocked by its content review",
            retryable=False,
        )
    else:
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="no_images",
            message="LiblibAI: the task succeeded without any deliverable image",
            retryable=False,
        )
    return PollResult(state=ProviderState.FAILED, progress=1.0, failed_images=failed, error=error, info=info)
