"""Real PNG files of any requested size, cheap to make: one colour per image, compressed row by row with zlib.

Result URLs name the image (`{provider}_{task}_{index}_{W}x{H}_{fill}.png`), so serving needs no stored state;
big images are built in a worker thread and the last few are cached.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import zlib
from collections import OrderedDict
from typing import NamedTuple

from .faults import Provider

MAX_SIDE = 8192
INLINE_PIXELS = 512 * 512
CACHE_BYTES = 256 * 1024 * 1024
PALETTE: tuple[tuple[int, int, int], ...] = (
    (66, 133, 244),
    (219, 68, 55),
    (244, 180, 0),
    (15, 157, 88),
    (171, 71, 188),
    (0, 172, 193),
    (255, 112, 67),
    (158, 157, 36),
)
_NAME = re.compile(
    r"^(aliyun|liblibai)_([A-Za-z0-9-]{1,64})_(\d{1,2})_(\d{1,5})x(\d{1,5})_(c[0-7]|noise)\.png$"
)


class ImageName(NamedTuple):
    provider: Provider
    task_id: str
    position: int
    width: int
    height: int
    fill: str

    def render(self) -> str:
        return f"{self.provider}_{self.task_id}_{self.position}_{self.width}x{self.height}_{self.fill}.png"


def fill_for(seed: int, noise: bool) -> str:
    """The fill of an image: noise, or a palette colour picked by the seed (same seed, same colour)."""
    return "noise" if noise else f"c{seed % len(PALETTE)}"


def parse_name(name: str) -> ImageName | None:
    match = _NAME.match(name)
    if match is None:
        return None
    provider, task_id, position, width, height, fill = match.groups()
    w, h = int(width), int(height)
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        return None
    return ImageName("aliyun" if provider == "aliyun" else "liblibai", task_id, int(position), w, h, fill)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int, fill: str) -> bytes:
    """An 8-bit RGB PNG of the given size; blocking (CPU) work, run it off the event loop when big."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if fill == "noise":
        compressor = zlib.compressobj(0)
        parts = [compressor.compress(b"\x00" + os.urandom(width * 3)) for _ in range(height)]
    else:
        red, green, blue = PALETTE[int(fill[1:]) % len(PALETTE)]
        compressor = zlib.compressobj(6)
        row = b"\x00" + bytes((red, green, blue)) * width
        rows_per_block = max(1, (1 << 20) // len(row))
        block = row * rows_per_block
        parts = []
        left = height
        while left > 0:
            take = min(left, rows_per_block)
            parts.append(compressor.compress(block if take == rows_per_block else row * take))
            left -= take
    parts.append(compressor.flush())
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


class ImageCache:
    """Built PNGs by (width, height, fill), least recently used dropped first; noise images are never cached."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._done: OrderedDict[tuple[int, int, str], bytes] = OrderedDict()
        self._building: dict[tuple[int, int, str], asyncio.Future[bytes]] = {}

    async def get(self, width: int, height: int, fill: str) -> bytes:
        if fill == "noise":
            return await asyncio.to_thread(make_png, width, height, fill)
        key = (width, height, fill)
        cached = self._done.get(key)
        if cached is not None:
            self._done.move_to_end(key)
            return cached
        pending = self._building.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if width * height <= INLINE_PIXELS:
            data = make_png(width, height, fill)
        else:
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._building[key] = future
            try:
                data = await asyncio.to_thread(make_png, width, height, fill)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                future.set_exception(exc)
                future.exception()  # marked retrieved: waiters (if any) re-raise it themselves
                raise
            finally:
                del self._building[key]
            future.set_result(data)
        self._store(key, data)
        return data

    def _store(self, key: tuple[int, int, str], data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        self._done[key] = data
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            _, dropped = self._done.popitem(last=False)
            self._bytes -= len(dropped)

    def clear(self) -> None:
        self._done.clear()
        self._bytes = 0
