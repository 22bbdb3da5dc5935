"""Image download: streamed to a temporary file beside its final name, renamed into place only when complete.

Memory use is bounded by the chunk size; sha256 is computed while streaming; the type comes from magic bytes and
the dimensions from Pillow. Only http(s) URLs from a provider's reply are fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import secrets
import socket
import struct
import time
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from PIL import Image
from yarl import URL

from .errors import DownloadError
from .netguard import AddressPolicy, check_url

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
MAX_URL_CHARS = 4096
PART_SUFFIX = ".part"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: bytes of an image's start kept for sniffing its type and, for a PNG, reading its size
HEAD_BYTES = 64
_MAGIC: list[tuple[bytes, str, str]] = [
    (PNG_MAGIC, "png", "image/png"),
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
        policy: AddressPolicy | None = None,
    ) -> None:
        """``session`` should connect through ``netguard.guarded_connector(policy)``: then every address a
        download reaches, redirects and DNS answers included, passes the policy (see ``netguard.py``)."""
        self.session = session
        self.image_dir = image_dir.resolve()
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

    async def download(
        self, url: str, provider: str, index: int, when: datetime, *, side_max: int = 8192
    ) -> SavedImage:
        """Fetch one image. Raises DownloadError (retryable when the fault is transient).

        An image that fits in one chunk is written, checked and renamed in one trip to a worker thread; a
        larger one is streamed to its temporary file chunk by chunk.
        """
        target = self.check_url(url)
        digest = hashlib.sha256()
        size = 0
        pending: list[bytes] = []  # held until they exceed one chunk, then written
        part: PartFile | None = None
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
                    head = b""
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise DownloadError(
                                f"image is larger than the {self.max_bytes}-byte cap", code="too_large"
                            )
                        if len(head) < HEAD_BYTES:
                            head += chunk[: HEAD_BYTES - len(head)]
                        digest.update(chunk)
                        if part is not None:
                            await asyncio.to_thread(part.write, chunk)
                            continue
                        pending.append(chunk)
                        if size > CHUNK_BYTES:
                            part = await asyncio.to_thread(PartFile.create, self.image_dir, pending)
                            pending = []
                    if resp.content_length is not None and size != resp.content_length:
                        raise DownloadError("image download was truncated", code="truncated", retryable=True)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise DownloadError(
                    f"image download failed: {type(exc).__name__}", code="connection_error", retryable=True
                ) from exc
            kind = sniff(head)
            if kind is None:
                raise DownloadError(
                    "downloaded file is not a PNG, JPEG, GIF or WebP image", code="not_an_image"
                )
            ext, content_type = kind
            final = self.image_dir / image_name(provider, when, index, ext)
            if part is None:
                part = await asyncio.to_thread(PartFile.create, self.image_dir, pending)
            width, height = await asyncio.to_thread(part.complete, final, png_size(head), side_max)
            part = None
        finally:
            if part is not None:
                await asyncio.to_thread(part.discard)
        return SavedImage(final, digest.hexdigest(), size, width, height, content_type)


class PartFile:
    """A download's temporary file beside its final name. Methods block: call them in a worker thread."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, image_dir: Path, chunks: list[bytes]) -> PartFile:
        path = image_dir / part_name()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            image_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        part = cls(path, fd)
        try:
            for chunk in chunks:
                part.write(chunk)
        except BaseException:
            part.discard()
            raise
        return part

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def complete(
        self, final: Path, size: tuple[int, int] | None = None, side_max: int = 8192
    ) -> tuple[int, int]:
        """Flush to disk, read the dimensions (unless known from the header), check them, and rename into
        place; the part is gone afterwards."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            width, height = size or _dimensions(self.path)
            if width > side_max or height > side_max:
                raise DownloadError(
                    f"image is {width}x{height}, larger than {side_max} pixels a side for this model",
                    code="image_too_large",
                )
            os.replace(self.path, final)
        except BaseException:
            self.discard()
            raise
        return width, height

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def png_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk, checked with its CRC; None if the bytes hold no such chunk.

    Pillow would read the same header; reading it here spares a file open for the most common format.
    """
    if len(head) < 33 or not head.startswith(PNG_MAGIC) or head[8:16] != b"\x00\x00\x00\rIHDR":
        return None
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        return None
    width, height = struct.unpack(">II", head[16:24])
    if not (width and height) or width * height > 2 * (Image.MAX_IMAGE_PIXELS or 1 << 62):
        return None  # let Pillow name what is wrong
    return width, height


def _dimensions(path: Path) -> tuple[int, int]:
    """Width and height from the image's header, raising DownloadError for what no image viewer would show.

    Pillow reads the header only (no decoding), so memory stays small whatever the image's size; an image whose
    header announces more pixels than Pillow allows is refused as a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Another download would be the same bomb: not worth a retry.
        raise DownloadError(
            "downloaded image announces more pixels than imaged decodes (a decompression bomb)",
            code="decompression_bomb",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(
            f"downloaded image is unreadable: {type(exc).__name__}", code="corrupt_image", retryable=True
        ) from exc


_part_numbers = itertools.count()


def part_name() -> str:
    """A temporary download's name records its host and process, so a restart can tell whose leftovers it sees
    (and a number, unique within the process)."""
    return f".{socket.gethostname()}_{os.getpid()}_{next(_part_numbers):x}{PART_SUFFIX}"


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
