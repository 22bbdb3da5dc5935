"""What a provider says, made safe before anything stores, sends or logs it.

A provider's reply may be broken or hostile: every text is capped and cleaned (no control characters, no lone
surrogates that the database or the broker cannot encode) and every secret it echoes is masked. Job and
results call this module on each reply; nothing else reads a provider's words.
"""

from __future__ import annotations

from .contract import ErrorCategory
from .errors import ProviderError, TaskError
from .providers.base import PollResult
from .redact import Redactor
from .sanitize import clean, clean_text

MAX_PROVIDER_TEXT = 1000
MAX_PROVIDER_DATA = 16 * 1024
#: an error code is a short identifier; a provider sending more is broken or hostile
MAX_PROVIDER_CODE = 128
#: a provider's task id is stored, logged and sent back in every poll
MAX_PROVIDER_ID = 256
#: a task keeps at most this many images from one reply, whatever it lists
MAX_LISTED_IMAGES = 100
#: the provider's URL of an image, as the result shows it (the download itself uses the whole URL)
MAX_SHOWN_URL = 4096


class ProviderOutput:
    """Makes a provider's errors, poll answers, task ids and image URLs safe to keep and show."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def text(self, text: str) -> str:
        return self.redactor.text(clean_text(text, MAX_PROVIDER_TEXT))

    def code(self, code: str) -> str:
        return self.redactor.text(clean_text(code, MAX_PROVIDER_CODE)) or "unknown"

    def error(self, exc: TaskError) -> None:
        """Clean a raised error in place (it is stored and sent as it is)."""
        exc.message = self.text(exc.message)
        exc.code = self.code(exc.code)
        exc.args = (exc.message,)

    def poll(self, poll: PollResult) -> None:
        """Cap and clean a poll answer in place; image URLs are cleaned where the result is built."""
        if poll.error is not None:
            poll.error = poll.error.model_copy(
                update={"message": self.text(poll.error.message), "code": self.code(poll.error.code)}
            )
        poll.info = self.redactor.value(clean(poll.info, max_bytes=MAX_PROVIDER_DATA))
        poll.failed_images = self.redactor.value(clean(poll.failed_images, max_bytes=MAX_PROVIDER_DATA))
        poll.images = poll.images[:MAX_LISTED_IMAGES]

    def task_id(self, value: str) -> str:
        """The task id a submit answered, if imaged can store it and send it back; else the task fails.

        The submit was most likely paid, but an id that cannot be stored cannot be polled either: failing
        (never resubmitting) is the only safe move.
        """
        if 0 < len(value) <= MAX_PROVIDER_ID and value.isprintable():
            return value
        raise ProviderError(
            "the provider answered the submit with an unusable task id "
            f"({len(value)} characters, not printable text of at most {MAX_PROVIDER_ID} characters)",
            code="bad_task_id",
            category=ErrorCategory.PROVIDER_ERROR,
        )

    def image_url(self, url: str) -> str:
        """An image's URL as the result shows it: a provider may echo a key in it."""
        return self.redactor.text(clean_text(url, MAX_SHOWN_URL))
