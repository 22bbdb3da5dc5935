"""Image naming and type sniffing."""

from __future__ import annotations

import re
from datetime import datetime

from imaged.images import image_name, sniff

from ..support import IMAGE_NAME_RE


def test_image_names_follow_the_original_scheme() -> None:
    name = image_name("liblibai", datetime(2025, 6, 16, 20, 8, 58), 0, "png")
    assert re.fullmatch(IMAGE_NAME_RE, name)
    assert name.startswith("liblibai_20250616_200858_0_")
    assert image_name("aliyun", datetime(2025, 6, 16), 3, "png") != image_name(
        "aliyun", datetime(2025, 6, 16), 3, "png"
    )


def test_sniff_by_magic_bytes() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\n\x00\x00") == ("png", "image/png")
    assert sniff(b"\xff\xd8\xff\xe0") == ("jpg", "image/jpeg")
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ("webp", "image/webp")
    assert sniff(b"GIF89a") == ("gif", "image/gif")
    assert sniff(b"<html>") is None
