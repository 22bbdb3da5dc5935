"""Image download: a provider's image streamed from its URL into the image store (``storage``).

Memory use is bounded by the chunk size (and, on S3, one upload part); sha256 is computed while streaming; the
type comes from magic bytes, the dimensions from the header (``image_format``). Only http(s) URLs from a
provider's reply are fetched, and only at addresses the policy allows (``netguard``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .errors import DownloadError
from .image_format import HEAD_BYTES, png_size, sniff
from .netguard import AddressPolicy, check_url
from .storage import ImageStore, ImageWriter

CHUNK_BYTES = 256 * 1024
MAX_URL_CHARS = 4096


@dataclass
class SavedImage:
    storage_url: str
    local_path: str | None
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str


class ImageDownloader:
    """Downloads provider image URLs into the image store."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        store: ImageStore,
        *,
        max_bytes: int,
        timeout_s: float,
        allowed_hosts: list[str] | None = None,
        policy: AddressPolicy | None = None,
    ) -> None:
        """``session`` should connect through ``netguard.guarded_connector(policy)``: then every address a
        download reaches, redirects and DNS answers included, passes the policy (see ``netguard.py``)."""
        self.session = session
        self.store = store
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=min(timeout_s, 30.0))
        self.allowed_hosts = {h.lower() for h in allowed_hosts or []}
        self.policy = policy or AddressPolicy()

    def check_url(self, url: str) -> URL:
        """The URL as it will be fetched; refused (not retryable) when it may not be."""
        if len(url) > MAX_URL_CHARS:
            raise DownloadError(f"image URL is longer than {MAX_URL_CHARS} characters", code="bad_url")
        checked = check_url(url, self.policy)
        host = (checked.raw_host or "").lower()
        if self.allowed_hosts and host not in self.allowed_hosts:
            raise DownloadError(
                f"image host {host[:100]!r} is not in the allowed list", code="host_not_allowed"
            )
        return checked

    async def download(self, url: str, name_of: Callable[[str], str], *, side_max: int = 8192) -> SavedImage:
        """Fetch one image into the store under ``name_of(extension)``. Raises DownloadError (retryable when the
        fault is transient). Nothing is written before the first bytes show an image."""
        target = self.check_url(url)
        digest = hashlib.sha256()
        size = 0
        head = b""
        writer: ImageWriter | None = None
        try:
            try:
                async with self.session.get(target, timeout=self.timeout, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise DownloadError(
                            f"image download answered HTTP {resp.status}",
                            code=f"http_{resp.status}",
                            retryable=resp.status >= 500 or resp.status == 429,
                            provider_status=resp.status,
                        )
                    if resp.content_length is not None and resp.content_length > self.max_bytes:
                        raise DownloadError(
                            f"image is larger than the {self.max_bytes}-byte cap", code="too_large"
                        )
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise DownloadError(
                                f"image is larger than the {self.max_bytes}-byte cap", code="too_large"
                            )
                        digest.update(chunk)
                        if writer is not None:
                            await writer.write(chunk)
                            continue
                        head += chunk
                        if len(head) >= HEAD_BYTES:
                            writer, content_type = self._open(head, name_of)
                            await writer.write(head)
                    if resp.content_length is not None and size != resp.content_length:
                        raise DownloadError("image download was truncated", code="truncated", retryable=True)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise DownloadError(
                    f"image download failed: {type(exc).__name__}", code="connection_error", retryable=True
                ) from exc
            if writer is None:  # an image shorter than its head: only the smallest GIFs
                writer, content_type = self._open(head, name_of)
                await writer.write(head)
            stored = await writer.commit(side_max, png_size(head[:HEAD_BYTES]))
            writer = None
        finally:
            if writer is not None:
                await writer.abort()
        return SavedImage(
            stored.storage_url,
            stored.local_path,
            digest.hexdigest(),
            size,
            stored.width,
            stored.height,
            content_type,
        )

    def _open(self, head: bytes, name_of: Callable[[str], str]) -> tuple[ImageWriter, str]:
        """A writer for the image whose first bytes are ``head``, and its content type; refuses a non-image."""
        kind = sniff(head)
        if kind is None:
            raise DownloadError("downloaded file is not a PNG, JPEG, GIF or WebP image", code="not_an_image")
        ext, content_type = kind
        return self.store.writer(name_of(ext), content_type), content_type
