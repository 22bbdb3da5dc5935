"""Images as files in ``IMAGED_IMAGE_DIR``: written beside their final name, renamed into place when complete.

An image that fits in one chunk is written, flushed, measured and renamed in one trip to a worker thread; a
larger one is streamed to its temporary file chunk by chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import StorageError
from ..image_format import check_sides, read_dimensions
from .base import ImageStore, ImageWriter, StoredImage

PART_SUFFIX = ".part"
#: bytes held in memory before a temporary file is opened
BUFFER_BYTES = 256 * 1024


class LocalStore(ImageStore):
    kind = "local"

    def __init__(self, image_dir: Path) -> None:
        self.image_dir = image_dir.resolve()

    def writer(self, name: str, content_type: str) -> ImageWriter:
        return LocalWriter(self.image_dir, self.image_dir / name)

    async def link(self, storage_url: str) -> str | None:
        return None

    def path_of(self, storage_url: str) -> Path | None:
        """The file of a ``file://`` URL inside the image directory; None for anything else."""
        parts = urlsplit(storage_url)
        if parts.scheme != "file":
            return None
        path = Path(unquote(parts.path))
        return path if path.parent == self.image_dir else None

    async def read(self, storage_url: str, max_bytes: int) -> bytes:
        path = self.path_of(storage_url)
        if path is None:
            raise StorageError("not an image of this store")

        def load() -> bytes:
            with path.open("rb") as file:
                data = file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise StorageError(f"image is larger than {max_bytes} bytes")
            return data

        try:
            return await asyncio.to_thread(load)
        except FileNotFoundError:
            raise StorageError("the image is gone") from None

    async def delete(self, storage_urls: Sequence[str]) -> int:
        paths = [p for url in storage_urls if (p := self.path_of(url)) is not None]

        def remove() -> int:
            removed = 0
            for path in paths:
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
            return removed

        return await asyncio.to_thread(remove)

    async def sweep(self, older_than_s: float) -> int:
        """Partial files whose process is gone (same host), or simply too old (a replica sharing the directory)."""

        def remove() -> int:
            removed = 0
            for part in leftover_parts(self.image_dir):
                if is_orphan(part, older_than_s):
                    part.unlink(missing_ok=True)
                    removed += 1
            return removed

        return await asyncio.to_thread(remove)

    async def check(self) -> str:
        def probe() -> str:
            target = self.image_dir
            while not target.exists():
                if target.parent == target:
                    break
                target = target.parent
            if not target.is_dir():
                raise StorageError(f"{self.image_dir}: {target} is not a directory")
            try:
                with tempfile.NamedTemporaryFile(dir=target, prefix=".imaged-check-"):
                    pass
            except OSError as exc:
                raise StorageError(f"{self.image_dir}: cannot write in {target}: {exc.strerror}") from None
            note = "writable" if target == self.image_dir else f"will be created (in writable {target})"
            return f"{self.image_dir} {note}"

        return await asyncio.to_thread(probe)

    def describe(self) -> str:
        return f"local directory {self.image_dir}"


class LocalWriter(ImageWriter):
    def __init__(self, image_dir: Path, final: Path) -> None:
        self.image_dir = image_dir
        self.final = final
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.part: PartFile | None = None

    async def write(self, chunk: bytes) -> None:
        if self.part is not None:
            await asyncio.to_thread(self.part.write, chunk)
            return
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes > BUFFER_BYTES:
            self.part = await asyncio.to_thread(PartFile.create, self.image_dir, self.pending)
            self.pending = []

    async def commit(self, side_max: int, size: tuple[int, int] | None) -> StoredImage:
        def finish(part: PartFile | None) -> tuple[int, int]:
            part = part or PartFile.create(self.image_dir, self.pending)
            return part.complete(self.final, size, side_max)

        part, self.part = self.part, None
        width, height = await asyncio.to_thread(finish, part)
        return StoredImage(self.final.as_uri(), str(self.final), width, height)

    async def abort(self) -> None:
        part, self.part = self.part, None
        self.pending = []
        if part is not None:
            await asyncio.to_thread(part.discard)


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

    def complete(self, final: Path, size: tuple[int, int] | None, side_max: int) -> tuple[int, int]:
        """Flush to disk, read the dimensions (unless known from the header), check them, and rename into
        place; the part is gone afterwards."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            width, height = size or read_dimensions(self.path)
            check_sides(width, height, side_max)
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


_part_numbers = itertools.count()


def part_name() -> str:
    """A temporary file's name records its host and process, so a restart can tell whose leftovers it sees
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
