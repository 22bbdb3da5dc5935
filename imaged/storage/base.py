"""Where images go: the interface of an image store, and what a stored image is.

A store writes one image at a time through an :class:`ImageWriter`: nothing is visible under the image's final
name until :meth:`ImageWriter.commit`, which checks the image's dimensions first. Names are the same on every run
of a task (see ``image_format.image_token``), so a task delivered again overwrites, never duplicates.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel


@dataclass(frozen=True)
class StoredImage:
    """An image in its store: ``storage_url`` is ``file:///abs/path`` or ``s3://bucket/key``."""

    storage_url: str
    local_path: str | None
    width: int
    height: int


class ImageWriter(abc.ABC):
    """One image being written. ``abort`` leaves nothing behind (and is harmless after ``commit``)."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self, side_max: int, size: tuple[int, int] | None) -> StoredImage:
        """Check the image's dimensions (``size`` when its header already told them; else the store reads
        them) against ``side_max``, then make it visible under its name. Raises DownloadError."""

    @abc.abstractmethod
    async def abort(self) -> None: ...


class ImageStore(abc.ABC):
    """Local files (``local``) or an S3-compatible bucket (``s3``)."""

    kind: ClassVar[str]

    async def start(self) -> None:  # noqa: B027 - most stores have nothing to open
        """Open connections (a store may be used only between start and close)."""

    async def close(self) -> None:  # noqa: B027 - nor anything to close
        """Close connections."""

    def settings_models(self) -> list[BaseModel]:
        """The store's own settings (their secrets are redacted everywhere)."""
        return []

    @abc.abstractmethod
    def writer(self, name: str, content_type: str) -> ImageWriter:
        """A writer of the image called ``name`` (the original naming scheme)."""

    @abc.abstractmethod
    async def link(self, storage_url: str) -> str | None:
        """A URL that downloads the image with plain HTTP, fresh on every call (presigned links expire); None
        where the store has none (local files)."""

    @abc.abstractmethod
    async def read(self, storage_url: str, max_bytes: int) -> bytes:
        """An image's bytes (the OpenAI API's ``b64_json``); StorageError when it is not this store's, is gone,
        or is larger than ``max_bytes``."""

    @abc.abstractmethod
    async def delete(self, storage_urls: Sequence[str]) -> int:
        """Delete images of this store (retention); others are left alone. Returns how many went."""

    @abc.abstractmethod
    async def sweep(self, older_than_s: float) -> int:
        """Remove what crashed writers left (partial files, incomplete multipart uploads) older than this."""

    @abc.abstractmethod
    async def check(self) -> str:
        """That images can be written and read (``imaged check``); raises StorageError saying what is wrong."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where images go, for logs (no secrets)."""
