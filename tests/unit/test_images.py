"""Image naming and type sniffing."""

from __future__ import annotations

import re
from datetime import datetime

from imaged.image_format import image_name, image_token, sniff

from ..support import IMAGE_NAME_RE


def test_image_names_follow_the_original_scheme() -> None:
    name = image_name("liblibai", datetime(2025, 6, 16, 20, 8, 58), 0, "png", image_token("task-1", 0))
    assert re.fullmatch(IMAGE_NAME_RE, name)
    assert name.startswith("liblibai_20250616_200858_0_")


def test_an_image_has_the_same_name_on_every_run_of_its_task() -> None:
    # A task delivered again writes its images under the names it used before, never under new ones.
    assert image_token("task-1", 0) == image_token("task-1", 0)
    tokens = {image_token(task, index) for task in ("task-1", "task-2") for index in range(4)}
    assert len(tokens) == 8 and all(re.fullmatch(r"[0-9a-f]{8}", token) for token in tokens)


def test_sniff_by_magic_bytes() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n\x00\x00") == ("png", "image/png")
    assert sniff(b"\xff\xd8\xff\xe0") == ("jpg", "image/jpeg")
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ("webp", "image/webp")
    assert sniff(b"GIF89a") == ("gif", "image/gif")
    assert sniff(b"<html>") is None
