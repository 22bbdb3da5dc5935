"""Result images: real PNGs of the requested size, served with the right headers, built without blocking."""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import pytest
from PIL import Image

from imaged.simulator import Simulator
from imaged.simulator.images import ImageCache, make_png

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (512, 512), (768, 1024), (1280, 720), (1440, 512)])
def test_make_png_decodes_to_the_requested_size(width: int, height: int) -> None:
    data = make_png(width, height, "c3")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (width, height)
        assert image.mode == "RGB"
        assert image.getpixel((width - 1, height - 1)) == image.getpixel((0, 0))


def test_solid_images_are_small_and_noise_images_are_not() -> None:
    assert len(make_png(1024, 1024, "c0")) < 20_000
    noise = make_png(256, 256, "noise")
    assert len(noise) > 256 * 256 * 3
    with Image.open(io.BytesIO(noise)) as image:
        image.load()
        assert image.size == (256, 256)


async def test_cache_returns_the_same_bytes() -> None:
    cache = ImageCache()
    first, second = await asyncio.gather(cache.get(2048, 2048, "c1"), cache.get(2048, 2048, "c1"))
    assert first is second
    assert await cache.get(2048, 2048, "c1") is first


async def test_big_image_is_built_off_the_event_loop() -> None:
    cache = ImageCache()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    running = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        data = await cache.get(4096, 4096, "noise")
        elapsed = time.monotonic() - started
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert len(data) > 4096 * 4096 * 3
    assert ticks >= min(5, int(elapsed * 200))  # the loop kept turning while the image was made


@pytest.mark.parametrize(("width", "height"), [(64, 32), (1024, 1024), (2048, 1536)])
async def test_image_route_serves_real_pngs(
    sim: Simulator, http: aiohttp.ClientSession, width: int, height: int
) -> None:
    url = f"{sim.url}/_sim/images/aliyun_0385dc79-1111_0_{width}x{height}_c2.png?Expires={int(time.time()) + 60}"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        data = await resp.read()
        assert resp.content_length == len(data)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (width, height)


async def test_image_head_has_length_without_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.head(f"{sim.url}/_sim/images/liblibai_abc_1_100x50_c0.png") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0
        assert await resp.read() == b""
    assert sim.stats()["providers"]["liblibai"]["downloads"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "nothing.png",
        "aliyun_x_0_0x10_c1.png",
        "aliyun_x_0_9000x10_c1.png",
        "other_x_0_10x10_c1.png",
        "a/../b.png",
    ],
)
async def test_unknown_or_oversized_images_are_404(
    sim: Simulator, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.get(f"{sim.url}/_sim/images/{name}") as resp:
        assert resp.status == 404


async def test_expired_url_is_refused(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/_sim/images/aliyun_x_0_10x10_c1.png?Expires={int(time.time()) - 1}"
    async with http.get(url) as resp:
        assert resp.status == 403


async def test_public_url_and_noise_fill_are_used_in_results(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.config.update({"public_url": "http://images.example:8900/", "image_fill": "noise", "task_seconds": 0})
    headers = {"Authorization": "Bearer sk-sim", "X-DashScope-Async": "enable"}
    body = {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "x"}, "parameters": {"n": 1, "size": "512*512"}}
    async with http.post(
        f"{sim.dashscope_base_url}/services/aigc/text2image/image-synthesis", json=body, headers=headers
    ) as resp:
        task_id = (await resp.json())["output"]["task_id"]
    async with http.get(f"{sim.dashscope_base_url}/tasks/{task_id}", headers=headers) as resp:
        url = (await resp.json())["output"]["results"][0]["url"]
    assert url.startswith("http://images.example:8900/_sim/images/")
    local = url.replace("http://images.example:8900", sim.url)
    async with http.get(local) as resp:
        data = await resp.read()
    assert len(data) > 512 * 512 * 3
