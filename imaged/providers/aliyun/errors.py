"""DashScope errors: codes and HTTP statuses to categories, and what makes a reply malformed."""

from __future__ import annotations

from ...contract import ErrorCategory, ErrorInfo
from ...errors import ProviderError
from ..base import HttpReply

_EXACT_CODES: dict[str, tuple[ErrorCategory, bool]] = {
    "InvalidParameter": (ErrorCategory.INVALID_REQUEST, False),
    "InvalidURL": (ErrorCategory.INVALID_REQUEST, False),
    "ModelNotFound": (ErrorCategory.INVALID_REQUEST, False),
    "DataInspectionFailed": (ErrorCategory.CONTENT_POLICY, False),
    "IPInfringementSuspect": (ErrorCategory.CONTENT_POLICY, False),
    "Arrearage": (ErrorCategory.QUOTA, False),
    "AllocationQuota.FreeTierOnly": (ErrorCategory.QUOTA, False),
    "InvalidApiKey": (ErrorCategory.AUTH, False),
    # "Failed to download multimodal content": an input image URL is unreachable or expired; fix the input
    "InternalError.Algo.InvalidParameter": (ErrorCategory.INVALID_REQUEST, False),
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
