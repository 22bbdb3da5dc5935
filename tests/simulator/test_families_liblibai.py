"""The 2026 LiblibAI lines over real HTTP: F.1 Kontext, Seedream 4.x, Qwen-Image, the ComfyUI demo workflow,
the unified status path, status 7, unreachable inputs, and limits and faults shared by every line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from imaged.simulator import Simulator

from .conftest import ACCESS_KEY, Listener, liblib, png_size, poll_liblib, star3_body

pytestmark = pytest.mark.timeout(30)
KONTEXT_T2I, KONTEXT_I2I = "/api/generate/kontext/text2img", "/api/generate/kontext/img2img"
SEEDREAM = "/api/generate/seedreamV4"
WEBUI_T2I = "/api/generate/webui/text2img"
COMFY_APP = "/api/generate/comfyui/app"
UNIFIED, WEBUI_STATUS = "/api/generate/status", "/api/generate/webui/status"
COMFY_STATUSES = ("/api/generate/comfy/status", "/api/generate/comfyui/status")
KONTEXT_T2I_TEMPLATE = "fe9928fde1b4491c9b360dd24aa2b115"
KONTEXT_I2I_TEMPLATE = "1c0a9712b3d84e1b8a9f49514a46d88c"
SEEDREAM_TEMPLATE = "0b6bad2fd350433ebb5abc7eb91f2ec9"
QWEN_TEMPLATE, QWEN_CHECKPOINT = "bf085132c7134622895b783b520b39ff", "75e0be0c93b34dd8baeec9c968013e0c"
COMFY_TEMPLATE, DEMO_WORKFLOW = "4df2efa0f18d46dc9758803e478eb51c", "2f22c5a6e3a44b1b8d7a4b4a5e4a6d0e"
SEEDREAM_45 = "doubao-seedream-4-5-251128"
URL = "https://example.com/in/fox.png"
UNREACHABLE = "https://unreachable.example.com/in/fox.png"


def kontext(img2img: bool = False, **params: Any) -> dict[str, Any]:
    template = KONTEXT_I2I_TEMPLATE if img2img else KONTEXT_T2I_TEMPLATE
    return {"templateUuid": template, "generateParams": {"prompt": "a red fox", **params}}


def seedream(**params: Any) -> dict[str, Any]:
    return {"templateUuid": SEEDREAM_TEMPLATE, "generateParams": {"prompt": "a red fox", **params}}


def qwen(**params: Any) -> dict[str, Any]:
    generate = {"checkPointId": QWEN_CHECKPOINT, "prompt": "一只红狐狸", **params}
    return {
        "templateUuid": QWEN_TEMPLATE,
        "generateParams": {k: v for k, v in generate.items() if v is not None},
    }


def comfy(nodes: dict[str, Any] | None = None, template: str | None = COMFY_TEMPLATE) -> dict[str, Any]:
    """A ComfyUI submit for the demo workflow; `nodes` maps node ids to {class_type?, inputs}."""
    body: dict[str, Any] = {"generateParams": {"workflowUuid": DEMO_WORKFLOW, **(nodes or {})}}
    if template is not None:
        body["templateUuid"] = template
    return body


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    body: dict[str, Any]
    images: int
    size: tuple[int, int]
    points: int


SUCCEEDS = [
    Case("kontext-t2i-defaults", KONTEXT_T2I, kontext(), 1, (1024, 1024), 58),
    Case(
        "kontext-t2i-pro-16:9",
        KONTEXT_T2I,
        kontext(model="pro", aspectRatio="16:9", imgCount=2),
        2,
        (1392, 752),
        58,
    ),
    Case(
        "kontext-t2i-max-9:21",
        KONTEXT_T2I,
        kontext(aspectRatio="9:21", guidance_scale=7.5),
        1,
        (672, 1568),
        58,
    ),
    Case(
        "kontext-i2i-max",
        KONTEXT_I2I,
        kontext(True, image_list=[URL] * 4, aspectRatio="3:4"),
        1,
        (880, 1184),
        58,
    ),
    Case(
        "kontext-i2i-pro",
        KONTEXT_I2I,
        kontext(True, model="pro", image_list=[URL], imgCount=3),
        3,
        (1024, 1024),
        87,
    ),
    Case("seedream-defaults", SEEDREAM, seedream(), 1, (2048, 2048), 20),
    Case(
        "seedream-4.0-sized",
        SEEDREAM,
        seedream(width=1024, height=2048, imgCount=3, promptMagic=1),
        3,
        (1024, 2048),
        60,
    ),
    Case(
        "seedream-4.5-references",
        SEEDREAM,
        seedream(model=SEEDREAM_45, width=2560, height=1440, imgCount=2, referenceImages=[URL] * 13),
        2,
        (2560, 1440),
        40,
    ),
    Case(
        "seedream-15-images",
        SEEDREAM,
        seedream(width=512, height=512, imgCount=15, sequentialImageGeneration="auto"),
        15,
        (512, 512),
        300,
    ),
    Case("qwen-image-defaults", WEBUI_T2I, qwen(), 1, (1328, 1328), 6),
    Case(
        "qwen-image-sized",
        WEBUI_T2I,
        qwen(width=928, height=1664, imgCount=2, steps=30, cfgScale=4.0),
        2,
        (928, 1664),
        12,
    ),
    Case("comfy-defaults-no-template", COMFY_APP, comfy(template=None), 1, (1024, 1024), 12),
    Case(
        "comfy-latent",
        COMFY_APP,
        comfy(
            {
                "5": {
                    "class_type": "EmptyLatentImage",
                    "inputs": {"width": 768, "height": 512, "batch_size": 3},
                },
                "12": {"inputs": {"text": "a red fox"}},
                "3": {"inputs": {"seed": 77, "steps": 8}},
            }
        ),
        3,
        (768, 512),
        36,
    ),
]


@pytest.mark.parametrize("case", SUCCEEDS, ids=lambda case: case.id)
async def test_each_line_makes_its_images(sim: Simulator, http: aiohttp.ClientSession, case: Case) -> None:
    status, submitted = await liblib(http, sim, case.path, case.body)
    assert (status, submitted["code"]) == (200, 0), submitted
    uuid = submitted["data"]["generateUuid"]
    comfy_task = case.path == COMFY_APP
    seen, final = await poll_liblib(http, sim, uuid, path=COMFY_STATUSES[0] if comfy_task else UNIFIED)
    assert seen[-1] == 5
    data = final["data"]
    assert (data["pointsCost"], data["accountBalance"]) == (
        case.points,
        sim.config.liblib_initial_balance - case.points,
    )
    assert len(data["images"]) == case.images
    assert all(image["auditStatus"] == 3 and isinstance(image["seed"], int) for image in data["images"])
    if comfy_task:
        assert {(image["nodeId"], image["outputName"]) for image in data["images"]} == {("9", "images")}
    assert {await png_size(http, image["imageUrl"]) for image in data["images"]} == {case.size}
    # the unified path answers every task; webui/status every task but ComfyUI ones (as before 2026);
    # the two ComfyUI spellings only ComfyUI tasks
    for path in (UNIFIED, WEBUI_STATUS, *COMFY_STATUSES):
        _, answer = await liblib(http, sim, path, {"generateUuid": uuid})
        answered = path == UNIFIED or (path in COMFY_STATUSES) == comfy_task
        assert answer["code"] == (0 if answered else 100051), path
        if answered:
            assert answer["data"]["images"] == data["images"]
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["submits"], stats["rejected"], stats["tasks_by_state"]["5"]) == (1, 0, 1)


async def test_comfy_seed_comes_from_the_sampler_node(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = comfy({"3": {"inputs": {"seed": 77}}, "5": {"inputs": {"batch_size": 2}}})
    _, submitted = await liblib(http, sim, COMFY_APP, body)
    _, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"], path=COMFY_STATUSES[1])
    assert [image["seed"] for image in final["data"]["images"]] == [77, 78]


REFUSED: list[tuple[str, str, dict[str, Any], int]] = [
    ("kontext-no-prompt", KONTEXT_T2I, {"templateUuid": KONTEXT_T2I_TEMPLATE, "generateParams": {}}, 100050),
    ("kontext-prompt-2001", KONTEXT_T2I, kontext(prompt="x" * 2001), 100000),
    ("kontext-model", KONTEXT_T2I, kontext(model="ultra"), 100000),
    ("kontext-ratio", KONTEXT_T2I, kontext(aspectRatio="5:4"), 100000),
    ("kontext-imgCount-5", KONTEXT_T2I, kontext(imgCount=5), 100000),
    ("kontext-guidance", KONTEXT_T2I, kontext(guidance_scale=25), 100000),
    ("kontext-i2i-no-images", KONTEXT_I2I, kontext(True), 100050),
    ("kontext-i2i-pro-two-images", KONTEXT_I2I, kontext(True, model="pro", image_list=[URL, URL]), 100000),
    ("kontext-i2i-max-five-images", KONTEXT_I2I, kontext(True, image_list=[URL] * 5), 100000),
    ("kontext-i2i-not-a-url", KONTEXT_I2I, kontext(True, image_list=["ftp://example.com/a.png"]), 100000),
    ("kontext-template-on-seedream", SEEDREAM, kontext(), 100120),
    ("kontext-t2i-template-on-i2i", KONTEXT_I2I, kontext(image_list=[URL]), 100120),
    ("seedream-imgCount-16", SEEDREAM, seedream(imgCount=16), 100000),
    ("seedream-references-plus-outputs", SEEDREAM, seedream(imgCount=6, referenceImages=[URL] * 10), 100000),
    ("seedream-4.0-11-references", SEEDREAM, seedream(referenceImages=[URL] * 11), 100000),
    ("seedream-4.0-over-2048²", SEEDREAM, seedream(width=4096, height=4096), 100000),
    ("seedream-4.0-side-511", SEEDREAM, seedream(width=511, height=1024), 100000),
    ("seedream-4.5-under-3.69M", SEEDREAM, seedream(model=SEEDREAM_45, width=2048, height=1024), 100000),
    ("seedream-4.5-ratio-over-16", SEEDREAM, seedream(model=SEEDREAM_45, width=8192, height=460), 100000),
    ("seedream-model", SEEDREAM, seedream(model="doubao-seedream-3-0"), 100000),
    ("seedream-sequential", SEEDREAM, seedream(sequentialImageGeneration="always"), 100000),
    ("seedream-no-prompt", SEEDREAM, {"templateUuid": SEEDREAM_TEMPLATE, "generateParams": {}}, 100050),
    ("qwen-no-checkpoint", WEBUI_T2I, qwen(checkPointId=None), 100050),
    ("qwen-other-checkpoint", WEBUI_T2I, qwen(checkPointId="0ea388c7eb854be3ba3c6f65aac6bfd3"), 100000),
    ("qwen-width-2049", WEBUI_T2I, qwen(width=2049), 100000),
    ("qwen-height-127", WEBUI_T2I, qwen(height=127), 100000),
    ("qwen-imgCount-5", WEBUI_T2I, qwen(imgCount=5), 100000),
    ("qwen-prompt-2001", WEBUI_T2I, qwen(prompt="x" * 2001), 100000),
    ("qwen-on-img2img", "/api/generate/webui/img2img", qwen(), 100120),
    ("comfy-no-workflow", COMFY_APP, {"generateParams": {}}, 100050),
    ("comfy-unknown-workflow", COMFY_APP, {"generateParams": {"workflowUuid": "0" * 32}}, 100000),
    ("comfy-unknown-node", COMFY_APP, comfy({"99": {"inputs": {"text": "x"}}}), 100000),
    ("comfy-link-input", COMFY_APP, comfy({"3": {"inputs": {"model": ["4", 0]}}}), 100000),
    ("comfy-unknown-input", COMFY_APP, comfy({"5": {"inputs": {"depth": 3}}}), 100000),
    ("comfy-class-type", COMFY_APP, comfy({"5": {"class_type": "KSampler", "inputs": {}}}), 100000),
    ("comfy-batch-5", COMFY_APP, comfy({"5": {"inputs": {"batch_size": 5}}}), 100000),
    ("comfy-width-text", COMFY_APP, comfy({"5": {"inputs": {"width": "big"}}}), 100000),
    ("comfy-text-number", COMFY_APP, comfy({"12": {"inputs": {"text": 5}}}), 100000),
    ("comfy-other-template", COMFY_APP, comfy(template="0" * 32), 100120),
    ("kontext-unreachable", KONTEXT_I2I, kontext(True, image_list=[URL, UNREACHABLE]), 100030),
    ("seedream-unreachable", SEEDREAM, seedream(referenceImages=[UNREACHABLE]), 100030),
    (
        "star3-unreachable",
        "/api/generate/webui/img2img/ultra",
        star3_body(aspectRatio="square", sourceImage=UNREACHABLE)
        | {"templateUuid": "07e00af4fc464c7ab55ff906f8acf1b7"},
        100030,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "code"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
async def test_each_rule_is_refused_with_the_real_code(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any], code: int
) -> None:
    status, answer = await liblib(http, sim, path, body)
    assert (status, answer["code"]) == (200, code), answer
    assert answer["msg"] and answer["data"] is None
    if body.get("generateParams", {}).get("workflowUuid") == "0" * 32:
        assert DEMO_WORKFLOW in answer["msg"] and "not a published workflow" in answer["msg"]
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["submits"], stats["rejected"]) == (0, 1)
    assert stats["credentials"][ACCESS_KEY]["account_balance"] == sim.config.liblib_initial_balance


async def test_older_seedream_size_rules(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.config.update({"liblib_seedream_size_rules": "older"})
    _, small = await liblib(http, sim, SEEDREAM, seedream(width=512, height=512))
    _, big = await liblib(http, sim, SEEDREAM, seedream(width=4096, height=4096))
    assert (small["code"], big["code"]) == (100000, 0)


async def test_unreachable_inputs_are_never_fetched(
    sim: Simulator, http: aiohttp.ClientSession, listener: Listener
) -> None:
    sim.config.update({"unreachable_inputs": [listener.url]})
    _, refused = await liblib(http, sim, KONTEXT_I2I, kontext(True, image_list=[listener.url]))
    assert refused["code"] == 100030 and listener.url in refused["msg"]
    _, accepted = await liblib(http, sim, SEEDREAM, seedream(referenceImages=[URL]))
    assert accepted["code"] == 0
    assert listener.connections == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [(KONTEXT_T2I, kontext()), (WEBUI_T2I, qwen()), (SEEDREAM, seedream())],
    ids=["kontext", "qwen", "seedream"],
)
async def test_status_7_when_the_task_outlives_the_timeout(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> None:
    sim.config.update({"task_seconds": 5, "liblib_timeout_seconds": 0.3})
    _, submitted = await liblib(http, sim, path, body)
    seen, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"], path=UNIFIED)
    assert seen[-1] == 7 and all(status < 5 for status in seen[:-1])
    data = final["data"]
    assert data["images"] == [] and "timed out" in data["generateMsg"]
    assert data["accountBalance"] == sim.config.liblib_initial_balance  # the frozen points are given back
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["tasks_by_state"]["7"], stats["in_flight"], stats["faults_injected"]) == (1, 0, 0)


async def test_status_7_fault_on_a_new_line_and_comfy_stays_within_1_to_6(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sim.url}/_sim/faults",
        json={"provider": "liblibai", "stage": "poll", "kind": "status7", "count": 1},
    ):
        pass
    _, submitted = await liblib(http, sim, SEEDREAM, seedream(imgCount=2))
    seen, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"], path=WEBUI_STATUS)
    assert seen[-1] == 7 and final["data"]["accountBalance"] == sim.config.liblib_initial_balance

    sim.config.update({"task_seconds": 5, "liblib_timeout_seconds": 0.2})
    _, submitted = await liblib(http, sim, COMFY_APP, comfy())
    seen, final = await poll_liblib(http, sim, submitted["data"]["generateUuid"], path=COMFY_STATUSES[1])
    assert seen[-1] == 6 and "timed out" in final["data"]["generateMsg"]
    assert final["data"]["accountBalance"] == sim.config.liblib_initial_balance


async def test_one_submit_per_second_and_five_tasks_for_all_lines_together(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.config.update({"liblib_submit_per_second": 1.0, "task_seconds": 5})
    _, first = await liblib(http, sim, KONTEXT_T2I, kontext())
    status, second = await liblib(http, sim, SEEDREAM, seedream())
    assert first["code"] == 0 and (status, second["code"]) == (429, 429)

    sim.config.update({"liblib_submit_per_second": None, "liblib_concurrency_limit": 5})
    bodies = [
        (WEBUI_T2I, qwen()),
        (COMFY_APP, comfy()),
        (SEEDREAM, seedream()),
        (KONTEXT_I2I, kontext(True, image_list=[URL])),
        (KONTEXT_T2I, kontext()),
    ]
    codes = [(await liblib(http, sim, path, body))[1]["code"] for path, body in bodies]
    assert codes == [0, 0, 0, 0, 100054]
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["submits"], stats["rate_limited"], stats["concurrency_limit_hits"]) == (5, 1, 1)


@pytest.mark.parametrize(
    ("fault", "path", "body", "status", "code"),
    [
        ({"stage": "submit", "kind": "http_429"}, KONTEXT_T2I, kontext(), 429, 429),
        ({"stage": "submit", "kind": "moderation"}, SEEDREAM, seedream(), 200, 100052),
        ({"stage": "submit", "kind": "http_500"}, COMFY_APP, comfy(), 500, 200000),
    ],
    ids=["kontext-429", "seedream-moderation", "comfy-500"],
)
async def test_submit_faults_reach_the_new_lines(
    sim: Simulator,
    http: aiohttp.ClientSession,
    fault: dict[str, Any],
    path: str,
    body: Any,
    status: int,
    code: int,
) -> None:
    async with http.post(f"{sim.url}/_sim/faults", json={"provider": "liblibai", "count": 1, **fault}):
        pass
    got_status, answer = await liblib(http, sim, path, body)
    assert (got_status, answer["code"]) == (status, code)
    assert sim.stats()["providers"]["liblibai"]["faults_injected"] == 1


@pytest.mark.parametrize("path", [UNIFIED, *COMFY_STATUSES])
async def test_poll_faults_and_signatures_on_the_new_status_paths(
    sim: Simulator, http: aiohttp.ClientSession, path: str
) -> None:
    _, submitted = await liblib(http, sim, COMFY_APP, comfy())
    uuid = submitted["data"]["generateUuid"]
    status, answer = await liblib(http, sim, path, {"generateUuid": uuid}, secret="wrong-secret")
    assert (status, answer["code"]) == (401, 401)
    async with http.post(
        f"{sim.url}/_sim/faults",
        json={"provider": "liblibai", "stage": "poll", "kind": "http_500", "count": 1},
    ):
        pass
    status, answer = await liblib(http, sim, path, {"generateUuid": uuid})
    assert (status, answer["code"]) == (500, 200000)
    async with http.post(
        f"{sim.url}/_sim/faults",
        json={"provider": "liblibai", "stage": "poll", "kind": "moderation", "count": 1},
    ):
        pass
    _, final = await poll_liblib(http, sim, uuid, path=path)
    assert final["code"] == 100055 and final["data"]["generateStatus"] == 6
    stats = sim.stats()["providers"]["liblibai"]
    assert (stats["signature_failures"], stats["faults_injected"]) == (1, 2)
