"""Every catalog model, and every LiblibAI custom-model route, end to end through imaged's client:
validate -> submit -> poll until terminal -> the images are there, of the asked size, on the right route."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from imaged.providers.base import ProviderState

from .conftest import ClientFactory
from .harness import CATALOG, INITIAL_BALANCE

pytestmark = pytest.mark.timeout(30)

# The routes as providers.md documents them, written out here independently of the catalog.
T2I, I2I, MESSAGES = "text2image", "image2image", "image-generation"
STAR3_T2I = "5d7e67009b344550bc1aa6ccbfa1d7f4"
STAR3_I2I = "07e00af4fc464c7ab55ff906f8acf1b7"
F1_T2I = "6f7c4652458d4802969f8d089cf5b91f"
F1_I2I = "63b72710c9574457ba303d9d9b8df8bd"
SD_T2I = "e10adc3949ba59abbe56e057f20f883e"
SD_I2I = "9c7d531dc75f476aa833b3d452b8f7ad"
SOURCE = "https://example.com/source/fox.png"
CHECKPOINT = "0ea388c7eb854be3ba3c6f65aac6bfd3"
QWEN = "bf085132c7134622895b783b520b39ff"
KONTEXT_T2I = "fe9928fde1b4491c9b360dd24aa2b115"
KONTEXT_I2I = "1c0a9712b3d84e1b8a9f49514a46d88c"
SEEDREAM = "0b6bad2fd350433ebb5abc7eb91f2ec9"
COMFY = "4df2efa0f18d46dc9758803e478eb51c"
COMFY_WORKFLOW = "2f22c5a6e3a44b1b8d7a4b4a5e4a6d0e"
POINTS = {
    STAR3_T2I: 10,
    STAR3_I2I: 10,
    F1_T2I: 8,
    F1_I2I: 8,
    SD_T2I: 6,
    SD_I2I: 6,
    QWEN: 6,
    SEEDREAM: 20,
    COMFY: 12,
}
"""The emulator's price per image of each template."""

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ModelCase:
    id: str
    provider: str
    model: str
    params: dict[str, Any]
    images: int
    route: str
    """DashScope: the endpoint kind the emulator saw; LiblibAI: the templateUuid it saw."""
    size: tuple[int, int] | None = None
    seeds: list[int] = field(default_factory=list)
    points: int | None = None
    """LiblibAI: points per image (default: ``POINTS`` of the route)."""


MODEL_CASES = [
    ModelCase(
        "wanx2.1-t2i-turbo",
        "aliyun",
        "wanx2.1-t2i-turbo",
        {"prompt": "a red fox", "n": 2, "seed": 42, "size": "768*512"},
        images=2,
        route=T2I,
        size=(768, 512),
        seeds=[42, 43],
    ),
    ModelCase(
        "wanx2.1-t2i-plus",
        "aliyun",
        "wanx2.1-t2i-plus",
        {"prompt": "a red fox", "negative_prompt": "blurry", "watermark": False},
        images=1,
        route=T2I,
        size=(1024, 1024),
    ),
    # no n: DashScope's own default is 4 images, the catalog's is 1
    ModelCase(
        "wanx2.0-t2i-turbo", "aliyun", "wanx2.0-t2i-turbo", {"prompt": "a red fox"}, images=1, route=T2I
    ),
    ModelCase(
        "wanx2.1-imageedit",
        "aliyun",
        "wanx2.1-imageedit",
        {"function": "stylization_all", "prompt": "as a watercolour", "base_image_url": SOURCE, "n": 2},
        images=2,
        route=I2I,
    ),
    ModelCase(
        "star-3-alpha-t2i",
        "liblibai",
        "star-3-alpha-t2i",
        {"prompt": "a red fox", "aspectRatio": "landscape", "imgCount": 2},
        images=2,
        route=STAR3_T2I,
        size=(1280, 720),
    ),
    ModelCase(
        "star-3-alpha-i2i",
        "liblibai",
        "star-3-alpha-i2i",
        {"prompt": "a red fox", "sourceImage": SOURCE, "width": 768, "height": 768},
        images=1,
        route=STAR3_I2I,
        size=(768, 768),
    ),
    ModelCase(
        "liblib-custom-f1-t2i",
        "liblibai",
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "a red fox", "width": 640, "height": 512},
        images=1,
        route=F1_T2I,
        size=(640, 512),
    ),
    ModelCase(
        "liblib-custom-f1-i2i",
        "liblibai",
        "liblib-custom",
        {"baseModelType": "f1", "generateParams": {"prompt": "a red fox", "sourceImage": SOURCE}},
        images=1,
        route=F1_I2I,
    ),
    ModelCase(
        "liblib-custom-sd-t2i",
        "liblibai",
        "liblib-custom",
        {
            "baseModelType": "sd",
            "checkPointId": CHECKPOINT,
            "prompt": "a red fox",
            "imgCount": 3,
            "seed": 1234,
        },
        images=3,
        route=SD_T2I,
        seeds=[1234, 1235, 1236],
    ),
    ModelCase(
        "liblib-custom-xl-i2i",
        "liblibai",
        "liblib-custom",
        {
            "baseModelType": "xl",
            "checkPointId": CHECKPOINT,
            "generateParams": {"prompt": "a red fox", "sourceImage": SOURCE, "denoisingStrength": 0.5},
        },
        images=1,
        route=SD_I2I,
    ),
]

MODEL_CASES += [
    ModelCase("wan2.1-alias", "aliyun", "wan2.1-t2i-turbo", {"prompt": "a red fox"}, images=1, route=T2I),
    ModelCase(
        "wan2.2-t2i-flash", "aliyun", "wan2.2-t2i-flash", {"prompt": "a red fox", "n": 2}, images=2, route=T2I
    ),
    ModelCase(
        "wan2.2-t2i-plus",
        "aliyun",
        "wan2.2-t2i-plus",
        {"prompt": "a fox", "size": "512*1440"},
        1,
        T2I,
        (512, 1440),
    ),
    ModelCase(
        "wan2.5-t2i-preview",
        "aliyun",
        "wan2.5-t2i-preview",
        {"prompt": "a red fox", "size": "2560*640"},
        images=1,
        route=T2I,
        size=(2560, 640),
    ),
    ModelCase("qwen-image", "aliyun", "qwen-image", {"prompt": "a red fox"}, 1, T2I, (1328, 1328)),
    ModelCase(
        "qwen-image-plus",
        "aliyun",
        "qwen-image-plus",
        {"prompt": "a fox", "size": "928*1664"},
        1,
        T2I,
        (928, 1664),
    ),
    ModelCase(
        "wan2.5-i2i-preview",
        "aliyun",
        "wan2.5-i2i-preview",
        {"prompt": "in blue", "images": [SOURCE, "data:image/png;base64,iVBORw0KGgo="], "n": 2},
        images=2,
        route=I2I,
        size=(1280, 1280),
    ),
    ModelCase(
        "wan2.6-t2i", "aliyun", "wan2.6-t2i", {"prompt": "a red fox", "n": 3}, 3, MESSAGES, (1280, 1280)
    ),
    ModelCase(
        "wan2.6-image",
        "aliyun",
        "wan2.6-image",
        {"prompt": "a red fox", "images": [SOURCE], "size": "1440*1280"},
        images=1,
        route=MESSAGES,
        size=(1440, 1280),
    ),
    ModelCase(
        "liblib-qwen-image",
        "liblibai",
        "liblib-qwen-image",
        {"prompt": "a red fox", "imgCount": 2},
        images=2,
        route=QWEN,
        size=(1328, 1328),
    ),
    ModelCase(
        "f1-kontext-pro-t2i",
        "liblibai",
        "f1-kontext-pro",
        {"prompt": "a red fox", "aspectRatio": "3:4"},
        images=1,
        route=KONTEXT_T2I,
        points=29,
    ),
    ModelCase(
        "f1-kontext-max-i2i",
        "liblibai",
        "f1-kontext-max",
        {"prompt": "a red fox", "image_list": [SOURCE, SOURCE], "imgCount": 2},
        images=2,
        route=KONTEXT_I2I,
        points=58,
    ),
    ModelCase(
        "seedream-4.0",
        "liblibai",
        "seedream-4.0",
        {"prompt": "a red fox", "width": 768, "height": 1024, "imgCount": 4, "referenceImages": [SOURCE]},
        images=4,
        route=SEEDREAM,
        size=(768, 1024),
    ),
    ModelCase(
        "seedream-4.5",
        "liblibai",
        "seedream-4.5",
        {"prompt": "a red fox"},
        images=1,
        route=SEEDREAM,
        size=(2048, 2048),
    ),
    ModelCase(
        "liblib-comfyui",
        "liblibai",
        "liblib-comfyui",
        {
            "workflowUuid": COMFY_WORKFLOW,
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 384, "batch_size": 3}},
        },
        images=3,
        route=COMFY,
        size=(640, 384),
    ),
]

_ORDER = [ProviderState.QUEUED, ProviderState.RUNNING, ProviderState.SUCCEEDED]


def test_the_table_covers_the_catalog() -> None:
    specs = [CATALOG.get(case.model) for case in MODEL_CASES]  # aliases resolve to their model
    assert {spec.name for spec in specs if spec is not None} == set(CATALOG.models) and None not in specs
    custom_routes = {case.route for case in MODEL_CASES if case.model == "liblib-custom"}
    assert custom_routes == {F1_T2I, F1_I2I, SD_T2I, SD_I2I}


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda case: case.id)
async def test_model_end_to_end(case: ModelCase, make_client: ClientFactory) -> None:
    client = make_client(case.provider)
    task = await client.submit(case.model, case.params)
    run = await client.run(task)
    result = run.last

    # polls move forward only: queued -> running -> succeeded, progress never going back
    assert result.state is ProviderState.SUCCEEDED, result.error
    assert run.states == sorted(run.states, key=_ORDER.index)
    progress = [poll.progress for poll in run.polls if poll.progress is not None]
    assert progress == sorted(progress) and progress[-1] == 1.0

    # the emulator saw the request on the documented route
    emulated = client.emu.sim.state.tasks[task.id]
    if case.provider == "aliyun":
        assert (emulated.kind, emulated.model) == (case.route, task.spec.name)
        assert result.info["usage"]["image_count"] == case.images
    else:
        assert emulated.model == case.route
        cost = (case.points or POINTS[case.route]) * case.images
        assert result.info == {"pointsCost": cost, "accountBalance": INITIAL_BALANCE - cost}

    assert [image.index for image in result.images] == list(range(case.images))
    assert result.failed_images == [] and result.error is None
    if case.seeds:
        assert [image.seed for image in result.images] == case.seeds
    described = client.provider.describe(task.spec, task.params)
    if case.size is not None:
        assert (described["width"], described["height"]) == case.size

    for image in result.images:
        async with client.emu.session.get(image.url) as response:
            assert response.status == 200
            data = await response.read()
        assert data.startswith(PNG)
        if case.size is not None:
            with Image.open(io.BytesIO(data)) as picture:
                assert picture.size == case.size
