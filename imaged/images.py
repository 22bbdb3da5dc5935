"""Image download: streamed to a temporary file beside its final name, renamed into place only when complete.

Memory use is bounded by the chunk size; sha256 is computed while streaming; the type comes from magic bytes and
the dimensions from Pillow. Only http(s) URLs from a provider's reply are fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from PIL import Image

from .errors import DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
PART_SUFFIX = ".part"

_MAGIC: list[tuple[bytes, str, str]] = [
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
]


def sniff(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) from an image's first bytes, or None if it is no image we know."""
    for magic, ext, ctype in _MAGIC:
        if head.startswith(magic):
            return ext, ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def image_name(provider: str, when: datetime, index: int, ext: str) -> str:
    """The original service's naming scheme: ``{provider}_{YYYYMMDD_HHMMSS}_{index}_{8 hex}.{ext}``."""
    return f"{provider}_{when:%Y%m%d_%H%M%S}_{index}_{secrets.token_hex(4)}.{ext}"


@dataclass
class SavedImage:
    path: Path
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str


class ImageDownloader:
    """Downloads provider image URLs into the image directory."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        image_dir: Path,
        *,
        max_bytes: int,
        timeout_s: float,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        self.session = session
        self.image_dir = image_dir.resolve()
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=min(timeout_s, 30.0))
        self.allowed_hosts = {h.lower() for h in allowed_hosts or []}

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(
                f"refusing to download a non-http(s) URL (scheme {parts.scheme!r})", code="bad_url"
            )
        if self.allowed_hosts and parts.hostname.lower() not in self.allowed_hosts:
            raise DownloadError(
                f"image host {parts.hostname!r} is not in the allowed list", code="host_not_allowed"
            )

    async def download(self, url: str, provider: str, index: int, when: datetime) -> SavedImage:
        """Fetch one image. Raises DownloadError (retryable when the fault is transient)."""
        self.check_url(url)
        await asyncio.to_thread(self.image_dir.mkdir, parents=True, exist_ok=True)
        part = self.image_dir / part_name()
        try:
            return await self._fetch(url, part, provider, index, when)
        finally:
            await asyncio.to_thread(part.unlink, missing_ok=True)

    async def _fetch(self, url: str, part: Path, provider: str, index: int, when: datetime) -> SavedImage:
        digest = hashlib.sha256()
        size = 0
        head = b""
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=False) as resp:
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
                fd = await asyncio.to_thread(os.open, part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise DownloadError(
                                f"image is larger than the {self.max_bytes}-byte cap", code="too_large"
                            )
                        if len(head) < 16:
                            head += chunk[:16]
                        digest.update(chunk)
                        await asyncio.to_thread(os.write, fd, chunk)
                    await asyncio.to_thread(os.fsync, fd)
                finally:
                    await asyncio.to_thread(os.close, fd)
                if resp.content_length is not None and size != resp.content_length:
                    raise DownloadError("image download was truncated", code="truncated", retryable=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DownloadError(
                f"image download failed: {type(exc).__name__}", code="connection_error", retryable=True
            ) from exc
        kind = sniff(head)
        if kind is None:
            raise DownloadError("downloaded file is not a PNG, JPEG, GIF or WebP image", code="not_an_image")
        ext, content_type = kind
        try:
            width, height = await asyncio.to_thread(_dimensions, part)
        except (OSError, Image.DecompressionBombError) as exc:
            raise DownloadError(
                f"downloaded image is unreadable: {exc}", code="corrupt_image", retryable=True
            ) from exc
        final = self.image_dir / image_name(provider, when, index, ext)
        await asyncio.to_thread(os.replace, part, final)
        return SavedImage(final, digest.hexdigest(), size, width, height, content_type)


def _dimensions(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
        return img.size


def part_name() -> str:
    """A temporary download's name records its host and process, so a restart can tell whose leftovers it sees."""
    return f".{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(6)}{PART_SUFFIX}"


def leftover_parts(image_dir: Path) -> list[Path]:
    """Partial downloads in the directory (left by a crash, or still being written)."""
    if not image_dir.exists():
        return []
    return [p for p in image_dir.iterdir() if p.name.endswith(PART_SUFFIX)]


def is_orphan(part: Path, max_age_s: float) -> bool:
    """True for a partial download whose process is gone: same host and a dead pid, or simply too old.

    Parts of other hosts sharing the directory are left alone until they are old.
    """
    try:
        age = time.time() - part.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > max_age_s:
        return True
    fields = part.name[1 : -len(PART_SUFFIX)].rsplit("_", 2)
    if len(fields) != 3 or fields[0] != socket.gethostname() or not fields[1].isdigit():
        return False
    pid = int(fields[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
