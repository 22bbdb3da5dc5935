"""The LiblibAI side of the emulator over real HTTP: signatures, envelope, statuses, templates, limits."""

from __future__ import annotations

import asyncio
import io
import re
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from imaged.simulator import Simulator

from .conftest import (
    ACCESS_KEY,
    SECRET_KEY,
    STAR3_T2I,
    STAR3_TEMPLATE,
    Listener,
    hmac_signature,
    liblib,
    poll_liblib,
    signed_params,
    star3_body,
)

pytestmark = pytest.mark.timeout(30)
STATUS = "/api/generate/webui/status"
CUSTOM_T2I = "/api/generate/webui/text2img"
F1_TEMPLATE = "6f7c4652458d4802969f8d089cf5b91f"
SD_TEMPLATE = "e10adc3949ba59abbe56e057f20f883e"


def test_signature_test_vectors_from_providers_md() -> None:
    secret, timestamp, nonce = "KppKsn7ezZxhi6lIDjbo7YyVYzanSu2d", "1725458584000", "random1232"
    assert hmac_signature(secret, STATUS, timestamp, nonce) == "Ld0hlMpTjSKvOWxx9qy-ytOVt9I"
    assert hmac_signature(secret, STAR3_T2I, timestamp, nonce) == "1RdKCvqD5opIko-BYvo6siyLowk"


def test_emulator_signs_like_the_test_vectors() -> None:
    from imaged.simulator.liblibai import sign

    secret, timestamp, nonce = "KppKsn7ezZxhi6lIDjbo7YyVYzanSu2d", "1725458584000", "random1232"
    assert sign(secret, STATUS, timestamp, nonce) == "Ld0hlMpTjSKvOWxx9qy-ytOVt9I"
    assert sign(secret, STAR3_T2I, timestamp, nonce) == "1RdKCvqD5opIko-BYvo6siyLowk"


async def image_size(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        data = await resp.read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


async def test_star3_runs_statuses_one_to_five(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"task_seconds": 1.5})
    status, submitted = await liblib(
        http, sim, STAR3_T2I, star3_body(aspectRatio="portrait", imgCount=2, steps=30)
    )
    assert status == 200
    assert submitted["code"] == 0 and submitted["msg"] == ""
    uuid = submitted["data"]["generateUuid"]
    assert re.fullmatch(r"[0-9a-f]{32}", uuid)

    seen: list[int] = []
    percents: list[float] = []
    final: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, final = await liblib(http, sim, STATUS, {"generateUuid": uuid})
        data = final["data"]
        percents.append(data["percentCompleted"])
        if not seen or seen[-1] != data["generateStatus"]:
            seen.append(data["generateStatus"])
        if data["generateStatus"] == 5:
            break
        assert data["images"] == []
        await asyncio.sleep(0.02)
    assert seen == [1, 2, 3, 4, 5]
    assert percents == sorted(percents) and percents[0] == 0.0 and percents[-1] == 1.0
    data = final["data"]
    assert data["generateUuid"] == uuid
    assert data["pointsCost"] > 0
    assert data["accountBalance"] == sim.config.liblib_initial_balance - data["pointsCost"]
    assert len(data["images"]) == 2
    assert all(image["auditStatus"] == 3 and isinstance(image["seed"], int) for image in data["images"])
    assert data["images"][1]["seed"] == data["images"][0]["seed"] + 1
    assert await image_size(http, data["images"][0]["imageUrl"]) == (768, 1024)


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"aspectRatio": "square"}, (1024, 1024)),
        ({"aspectRatio": "landscape"}, (1280, 720)),
        ({"imageSize": {"width": 600, "height": 900}}, (600, 900)),
    ],
)
async def test_star3_sizes(
    sim: Simulator, http: aiohttp.ClientSession, params: dict[str, Any], size: tuple[int, int]
) -> None:
    sim.config.update({"task_seconds": 0})
    _, submitted = await liblib(http, sim, STAR3_T2I, star3_body(**params))
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
    assert await image_size(http, final["data"]["images"][0]["imageUrl"]) == size


async def test_balance_decreases_with_each_task(sim: Simulator, http: aiohttp.ClientSession) -> None:
    balances = []
    for _ in range(2):
        _, submitted = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
        _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
        balances.append(final["data"]["accountBalance"])
    assert balances[1] < balances[0] < sim.config.liblib_initial_balance


async def test_insufficient_points(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert answer["code"] == 0
    _, final = await poll_liblib(http, sim, answer["data"]["generateUuid"])
    cost = final["data"]["pointsCost"]
    sim.config.update({"liblib_initial_balance": cost + 5})  # 5 points left now
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, answer["code"]) == (200, 100021)
    assert sim.stats()["providers"]["liblibai"]["credentials"][ACCESS_KEY]["account_balance"] == 5


async def test_star3_img2img_never_fetches_its_source(
    sim: Simulator, http: aiohttp.ClientSession, listener: Listener
) -> None:
    body = {
        "templateUuid": "07e00af4fc464c7ab55ff906f8acf1b7",
        "generateParams": {
            "prompt": "a cat",
            "sourceImage": listener.url,
            "imageSize": {"width": 768, "height": 1024},
            "imgCount": 1,
            "controlnet": {"controlType": "depth", "controlImage": listener.url},
        },
    }
    status, submitted = await liblib(http, sim, "/api/generate/webui/img2img/ultra", body)
    assert (status, submitted["code"]) == (200, 0), submitted
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
    assert await image_size(http, final["data"]["images"][0]["imageUrl"]) == (768, 1024)
    assert listener.connections == 0


async def test_custom_models(sim: Simulator, http: aiohttp.ClientSession) -> None:
    f1 = {"templateUuid": F1_TEMPLATE, "generateParams": {"prompt": "a cat", "imgCount": 1}}
    _, submitted = await liblib(http, sim, CUSTOM_T2I, f1)
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
    assert await image_size(http, final["data"]["images"][0]["imageUrl"]) == (512, 512)

    sd = {
        "templateUuid": SD_TEMPLATE,
        "generateParams": {
            "checkPointId": "0ea388c7eb854be3ba3c6f65aac6bfd3",
            "prompt": "a cat",
            "negativePrompt": "blurry",
            "width": 640,
            "height": 384,
            "imgCount": 3,
            "steps": 20,
            "cfgScale": 7,
            "seed": 1234,
            "additionalNetwork": [{"modelId": "abc", "weight": 0.8}],
        },
    }
    _, submitted = await liblib(http, sim, CUSTOM_T2I, sd)
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"])
    images = final["data"]["images"]
    assert [image["seed"] for image in images] == [1234, 1235, 1236]
    assert await image_size(http, images[2]["imageUrl"]) == (640, 384)


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (STAR3_T2I, star3_body(aspectRatio="square", imgCount=5), 100000),
        (STAR3_T2I, star3_body(aspectRatio="wide"), 100000),
        (STAR3_T2I, star3_body(imageSize={"width": 300, "height": 900}), 100000),
        (STAR3_T2I, star3_body(), 100050),
        (
            STAR3_T2I,
            {"templateUuid": STAR3_TEMPLATE, "generateParams": {"aspectRatio": "square", "imgCount": 1}},
            100050,
        ),
        (STAR3_T2I, {"templateUuid": STAR3_TEMPLATE}, 100050),
        (STAR3_T2I, star3_body(aspectRatio="square", prompt="x" * 2001), 100000),
        (STAR3_T2I, {"templateUuid": "00000000000000000000000000000000", "generateParams": {}}, 100120),
        (STAR3_T2I, {"templateUuid": F1_TEMPLATE, "generateParams": {"prompt": "x"}}, 100120),
        (CUSTOM_T2I, {"templateUuid": STAR3_TEMPLATE, "generateParams": {"prompt": "x"}}, 100120),
        (CUSTOM_T2I, {"templateUuid": SD_TEMPLATE, "generateParams": {"prompt": "x"}}, 100050),
        (CUSTOM_T2I, {"templateUuid": F1_TEMPLATE, "generateParams": {"prompt": "x", "width": 2000}}, 100000),
        (
            CUSTOM_T2I,
            {"templateUuid": F1_TEMPLATE, "generateParams": {"prompt": "x", "cfgScale": 20}},
            100000,
        ),
        (
            "/api/generate/webui/img2img/ultra",
            star3_body(aspectRatio="square") | {"templateUuid": "07e00af4fc464c7ab55ff906f8acf1b7"},
            100050,
        ),
    ],
)
async def test_invalid_submits(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any], code: int
) -> None:
    status, answer = await liblib(http, sim, path, body)
    assert (status, answer["code"]) == (200, code)
    assert answer["msg"] and answer["data"] is None
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["submits"], stats["rejected"]) == (0, 1)


async def test_invalid_json_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}{STAR3_T2I}", params=signed_params(STAR3_T2I), data=b"{oops") as resp:
        assert resp.status == 200
        assert (await resp.json())["code"] == 100000


async def test_unknown_task_is_100051(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "8dcbfa2997444899b71357ccb7db378b"})
    assert (status, answer["code"], answer["data"]) == (200, 100051, None)
    status, answer = await liblib(http, sim, STATUS, {})
    assert answer["code"] in (100000, 100050)


async def test_another_accounts_task_is_100051(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_extra_keys": {"other-access": "other-secret"}})
    other = {"access_key": "other-access", "secret": "other-secret"}
    _, submitted = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"), **other)
    uuid = submitted["data"]["generateUuid"]
    _, mine = await liblib(http, sim, STATUS, {"generateUuid": uuid})
    assert mine["code"] == 100051
    _, theirs = await liblib(http, sim, STATUS, {"generateUuid": uuid}, **other)
    assert theirs["code"] == 0


@pytest.mark.parametrize(
    "sign",
    [
        {"secret": "wrong-secret"},
        {"access_key": "no-such-key"},
        {"timestamp_offset_ms": -6 * 60 * 1000},
        {"timestamp_offset_ms": 6 * 60 * 1000},
        {"urlsafe": False},
    ],
    ids=["wrong-secret", "unknown-access-key", "stale-timestamp", "future-timestamp", "standard-base64"],
)
async def test_bad_signatures_are_401(
    sim: Simulator, http: aiohttp.ClientSession, sign: dict[str, Any]
) -> None:
    sign = dict(sign)
    if (
        "timestamp_offset_ms" in sign
    ):  # relative to now, not to collection time: the suite may run for minutes
        sign["timestamp_ms"] = int(time.time() * 1000) + sign.pop("timestamp_offset_ms")
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "x"}, **sign)
    assert (status, answer["code"]) == (401, 401)
    status, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"), **sign)
    assert (status, answer["code"]) == (401, 401)
    stats = sim.stats()["providers"]["liblibai"]
    assert stats["signature_failures"] == 2
    assert stats["submits"] == 0 and stats["polls"] == 0


async def test_signature_is_bound_to_the_path_and_required(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    params = signed_params(STATUS)  # signed for another path
    async with http.post(
        f"{sim.url}{STAR3_T2I}", params=params, json=star3_body(aspectRatio="square")
    ) as resp:
        assert resp.status == 401
    async with http.post(f"{sim.url}{STATUS}", json={"generateUuid": "x"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == 401


async def test_signature_window_accepts_four_minutes_of_skew(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    skewed = int(time.time() * 1000) - 4 * 60 * 1000
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "x"}, timestamp_ms=skewed)
    assert (status, answer["code"]) == (200, 100051)


async def test_envelope_error_style(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_error_style": "envelope"})
    status, answer = await liblib(http, sim, STATUS, {"generateUuid": "x"}, secret="wrong")
    assert (status, answer["code"]) == (200, 401)


async def test_five_task_cap_answers_100054(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_concurrency_limit": 5, "task_seconds": 2.0})
    codes = []
    for _ in range(6):
        _, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
        codes.append(answer["code"])
    assert codes == [0, 0, 0, 0, 0, 100054]
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["max_concurrent"], stats["concurrency_limit_hits"], stats["in_flight"]) == (5, 1, 5)
    assert stats["credentials"][ACCESS_KEY]["max_concurrent"] == 5
    await asyncio.sleep(2.1)  # finished without being polled: slots are free again
    _, answer = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert answer["code"] == 0
    assert sim.stats()["providers"]["liblibai"]["max_concurrent"] == 5


async def test_caps_are_per_credential(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_concurrency_limit": 1, "task_seconds": 2, "liblib_extra_keys": {"ak2": "sk2"}})
    _, first = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    _, second = await liblib(
        http, sim, STAR3_T2I, star3_body(aspectRatio="square"), access_key="ak2", secret="sk2"
    )
    _, third = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert [first["code"], second["code"], third["code"]] == [0, 0, 100054]
    stats = sim.stats()["providers"]["liblibai"]
    assert stats["max_concurrent"] == 2
    assert stats["credentials"][ACCESS_KEY]["max_concurrent"] == 1
    assert stats["credentials"]["ak2"]["max_concurrent"] == 1
    assert stats["credentials"][ACCESS_KEY]["concurrency_limit_hits"] == 1


async def test_one_submit_per_second(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_submit_per_second": 1.0})
    status, first = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, first["code"]) == (200, 0)
    status, second = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, second["code"]) == (429, 429)
    # status queries are not rate limited
    for _ in range(5):
        _, answer = await liblib(http, sim, STATUS, {"generateUuid": first["data"]["generateUuid"]})
        assert answer["code"] == 0
    await asyncio.sleep(1.05)
    status, third = await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    assert (status, third["code"]) == (200, 0)
    assert sim.stats()["providers"]["liblibai"]["rate_limited"] == 1


async def test_comfyui_workflow(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {
        "templateUuid": "4df2efa0f18d46dc9758803e478eb51c",
        "generateParams": {
            "workflowUuid": "2f22c5a6e3a44b1b8d7a4b4a5e4a6d0e",
            "12": {"inputs": {"text": "cat"}},
        },
    }
    status, submitted = await liblib(http, sim, "/api/generate/comfyui/app", body)
    assert (status, submitted["code"]) == (200, 0)
    uuid = submitted["data"]["generateUuid"]
    seen, final = await poll_liblib(http, sim, uuid, path="/api/generate/comfy/status")
    assert seen[-1] == 5
    assert len(final["data"]["images"]) == 1
    _, webui = await liblib(http, sim, STATUS, {"generateUuid": uuid})
    assert webui["code"] == 100051


async def test_every_route_is_post_only(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}{STATUS}", params=signed_params(STATUS)) as resp:
        assert resp.status == 405


def test_secret_in_fixture_matches_default_config() -> None:
    from imaged.simulator import SimulatorConfig

    assert (SimulatorConfig().liblib_access_key, SimulatorConfig().liblib_secret_key) == (
        ACCESS_KEY,
        SECRET_KEY,
    )
