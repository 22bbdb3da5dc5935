"""imaged's exceptions: one root, one branch per layer."""

from __future__ import annotations

from .contract import ErrorCategory, ErrorInfo


class ImagedError(Exception):
    """Root of every error imaged raises on purpose."""


class ConfigError(ImagedError):
    """The configuration or the model catalog is unusable."""


class StorageError(ImagedError):
    """The image store cannot be used (``imaged check``, start): the message says why, without secrets."""


class HandBack(ImagedError):
    """The job stops without an outcome: its message goes back to the queue, for this or another replica."""


class TaskError(ImagedError):
    """A task cannot go on; carries the error recorded on the task and sent in its event."""

    category: ErrorCategory = ErrorCategory.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        category: ErrorCategory | None = None,
        retryable: bool = False,
        provider_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if category is not None:
            self.category = category
        self.code = code or self.category.value
        self.retryable = retryable
        self.provider_status = provider_status
        self.retry_after = retry_after

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            category=self.category,
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            provider_status=self.provider_status,
        )


class InvalidRequest(TaskError):
    """The request or its parameters are invalid; it never reaches a provider."""

    category = ErrorCategory.INVALID_REQUEST


class ProviderError(TaskError):
    """A provider call failed; the category says whether and how to retry."""

    category = ErrorCategory.PROVIDER_ERROR


class DownloadError(TaskError):
    """An image could not be downloaded; retried as a download, never by generating again."""

    category = ErrorCategory.DOWNLOAD_FAILED
