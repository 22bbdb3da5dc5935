"""LiblibAI errors: envelope and HTTP codes to categories, and what makes a reply malformed."""

from __future__ import annotations

from typing import Any

from ...contract import ErrorCategory
from ...errors import ProviderError
from ..base import HttpReply, malformed

_CODES: dict[int, tuple[ErrorCategory, bool, str]] = {
    401: (
        ErrorCategory.AUTH,
        False,
        "signature verification failed (check AccessKey, SecretKey and the clock)",
    ),
    403: (ErrorCategory.AUTH, False, "access denied"),
    429: (ErrorCategory.RATE_LIMITED, True, "too many requests"),
    100000: (ErrorCategory.INVALID_REQUEST, False, "invalid parameters"),
    100010: (ErrorCategory.AUTH, False, "AccessKey expired"),
    100020: (ErrorCategory.AUTH, False, "user does not exist"),
    100021: (ErrorCategory.QUOTA, False, "insufficient points"),
    100030: (ErrorCategory.INVALID_REQUEST, False, "input image unreachable"),
    100031: (ErrorCategory.CONTENT_POLICY, False, "input image has prohibited content"),
    100032: (ErrorCategory.INVALID_REQUEST, False, "input image download failed"),
    100050: (ErrorCategory.INVALID_REQUEST, False, "parameter completeness check failed"),
    100051: (ErrorCategory.PROVIDER_ERROR, False, "task does not exist"),
    100052: (ErrorCategory.CONTENT_POLICY, False, "sensitive content in the prompt"),
    100053: (ErrorCategory.INVALID_REQUEST, False, "model not in the allowed list"),
    100054: (ErrorCategory.RATE_LIMITED, True, "concurrent-task limit: waiting for a slot"),
    100055: (ErrorCategory.CONTENT_POLICY, False, "sensitive content in the result"),
    100120: (ErrorCategory.INVALID_REQUEST, False, "template does not exist"),
    200000: (ErrorCategory.PROVIDER_ERROR, True, "internal error"),
    200001: (ErrorCategory.INVALID_REQUEST, False, "model does not exist"),
    210000: (ErrorCategory.PROVIDER_ERROR, True, "external service failed"),
}

# A 403 whose message speaks of points or the API plan is a quota problem, not a key problem.
_QUOTA_WORDS = ("point", "plan", "balance", "quota", "积分", "套餐", "余额", "点数")


def classify(code: int, message: str = "") -> tuple[ErrorCategory, bool, str]:
    """Category, retryability and meaning of a LiblibAI code (an HTTP status or an envelope ``code``)."""
    if code == 403 and any(word in message.lower() for word in _QUOTA_WORDS):
        return ErrorCategory.QUOTA, False, "API plan or points missing"
    if code in _CODES:
        return _CODES[code]
    if 500 <= code <= 599:
        return ErrorCategory.PROVIDER_ERROR, True, f"HTTP {code}"
    return ErrorCategory.PROVIDER_ERROR, False, "unknown error"


def error_for(
    code: int, message: str | None, *, http_status: int | None = None, retry_after: float | None = None
) -> ProviderError:
    """The :class:`ProviderError` of a LiblibAI code; the message starts with what the code means."""
    category, retryable, meaning = classify(code, message or "")
    detail = f"LiblibAI code {code}" + (f": {message}" if message else "")
    return ProviderError(
        f"{meaning} ({detail})",
        code=str(code),
        category=category,
        retryable=retryable,
        provider_status=http_status,
        retry_after=retry_after,
    )


def _envelope_code(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def envelope_data(reply: HttpReply, what: str) -> dict[str, Any]:
    """``data`` of a successful envelope; otherwise the error the HTTP status or the envelope ``code`` means.

    An envelope code the table knows wins over the HTTP status (an HTTP 400 carrying 100000 is "invalid
    parameters"); an unknown one on a non-200 reply falls back on the HTTP status.
    """
    code = _envelope_code(reply.body)
    body = reply.body if isinstance(reply.body, dict) else {}
    message = body.get("msg") if isinstance(body.get("msg"), str) else None
    if reply.status != 200:
        use = code if code is not None and code != 0 and code in _CODES else reply.status
        if not reply.is_json and message is None:
            message = f"{what} answered HTTP {reply.status} without a JSON body"
        raise error_for(use, message, http_status=reply.status, retry_after=reply.retry_after)
    if not reply.is_json:
        raise malformed(what, "body is not JSON", reply.status)
    if code is None:
        raise malformed(what, "no envelope 'code'", reply.status)
    if code != 0:
        raise error_for(code, message, http_status=reply.status, retry_after=reply.retry_after)
    data = body.get("data")
    if not isinstance(data, dict):
        raise malformed(what, "no 'data' object", reply.status)
    return data
