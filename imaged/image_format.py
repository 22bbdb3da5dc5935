"""What an image is: its type from its first bytes, its dimensions from its header, and its name.

Nothing here decodes pixels: dimensions come from a PNG's own IHDR chunk or Pillow's header parse, so memory stays
small whatever an image claims to be; an image that announces more pixels than Pillow allows is a decompression
bomb and is refused.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from datetime import datetime
from pathlib import Path

from PIL import Image

from .errors import DownloadError

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


def image_name(provider: str, when: datetime, index: int, ext: str, token: str) -> str:
    """The original service's naming scheme: ``{provider}_{YYYYMMDD_HHMMSS}_{index}_{8 hex}.{ext}``."""
    return f"{provider}_{when:%Y%m%d_%H%M%S}_{index}_{token[:8]}.{ext}"


def image_token(task_id: str, index: int) -> str:
    """The 8 hex characters of an image's name, the same on every run of its task: a task delivered again writes
    its images under the names it used before, never under new ones."""
    return hashlib.sha256(f"{task_id}:{index}".encode()).hexdigest()[:8]


def check_sides(width: int, height: int, side_max: int) -> None:
    if width > side_max or height > side_max:
        raise DownloadError(
            f"image is {width}x{height}, larger than {side_max} pixels a side for this model",
            code="image_too_large",
        )


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


def read_dimensions(source: Path | bytes) -> tuple[int, int]:
    """Width and height from the image's header, raising DownloadError for what no image viewer would show.

    Pillow reads the header only (no decoding), so memory stays small whatever the image's size; an image whose
    header announces more pixels than Pillow allows is refused as a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                return img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Another download would be the same bomb: not worth a retry.
        raise DownloadError(
            "the image announces more pixels than imaged decodes (a decompression bomb)",
            code="decompression_bomb",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadError(
            f"the image is unreadable: {type(exc).__name__}", code="corrupt_image", retryable=True
        ) from exc
