"""The LiblibAI generation lines (providers.md §2 and "LiblibAI: lines and their bodies"): which submit path
takes which templateUuid, what each line's `generateParams` accept, what it makes and what it costs.

| line                     | path                          | images made                      | points per image |
| Star-3 Alpha t2i/i2i     | webui/{text2img,img2img}/ultra | aspectRatio or imageSize         | 10               |
| custom F.1 / SD t2i/i2i  | webui/{text2img,img2img}      | width x height (512 default)     | 8 / 6            |
| Qwen-Image               | webui/text2img                | width x height (1328 default)    | 6                |
| F.1 Kontext t2i/i2i      | kontext/{text2img,img2img}    | about 1 MP at aspectRatio        | 29 pro / 58 max  |
| Seedream 4.0 / 4.5       | seedreamV4                    | width x height (2048 default)    | 20               |
| ComfyUI workflow         | comfyui/app (see `comfyui`)   | EmptyLatentImage of the workflow | 12               |

Prices other than Kontext's (the only documented list price) are the emulator's choice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import comfyui
from .config import SimulatorConfig
from .images import MAX_SIDE
from .liblibai_params import (
    Job,
    LiblibError,
    StatusKind,
    choice,
    integer,
    invalid,
    missing,
    number,
    text,
    url,
    url_list,
)

STAR3_T2I = "/api/generate/webui/text2img/ultra"
STAR3_I2I = "/api/generate/webui/img2img/ultra"
CUSTOM_T2I = "/api/generate/webui/text2img"
CUSTOM_I2I = "/api/generate/webui/img2img"
KONTEXT_T2I = "/api/generate/kontext/text2img"
KONTEXT_I2I = "/api/generate/kontext/img2img"
SEEDREAM = "/api/generate/seedreamV4"
COMFY_APP = comfyui.APP_PATH
SUBMIT_PATHS = (STAR3_T2I, STAR3_I2I, CUSTOM_T2I, CUSTOM_I2I, KONTEXT_T2I, KONTEXT_I2I, SEEDREAM, COMFY_APP)
F1_CHECKPOINT = "412b427ddb674b4dbab9e5abd5ae6057"
QWEN_CHECKPOINT = "75e0be0c93b34dd8baeec9c968013e0c"
ASPECT_RATIOS = {"square": (1024, 1024), "portrait": (768, 1024), "landscape": (1280, 720)}
CONTROL_TYPES = frozenset({"line", "depth", "pose", "IPAdapter", "subject"})
KONTEXT_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (880, 1184),
    "4:3": (1184, 880),
    "9:16": (752, 1392),
    "16:9": (1392, 752),
    "9:21": (672, 1568),
    "21:9": (1568, 672),
}
"""Kontext output sizes are undocumented: about 1 MP at the ratio (FLUX.1 Kontext's preferred resolutions)."""
SEEDREAM_40 = "doubao-seedream-4-0-250828"
SEEDREAM_45 = "doubao-seedream-4-5-251128"
SEEDREAM_SIDE_MAX = MAX_SIDE
"""No Seedream side rule caps 4.5's sides (1:16 at 4096² allows 16384); the emulator's images stop at 8192."""
SEEDREAM_MAX_IMAGES = 15
"""Reference images plus output images, per Seedream task."""
POINTS_PER_IMAGE = {
    "star3": 10,
    "f1": 8,
    "sd": 6,
    "qwen": 6,
    "kontext-pro": 29,
    "kontext-max": 58,
    "seedream": 20,
    "comfy": comfyui.POINTS_PER_IMAGE,
}


class Template(NamedTuple):
    path: str
    family: str  # "star3" | "f1" | "sd" | "qwen" | "kontext" | "seedream"
    img2img: bool


TEMPLATES = {
    "5d7e67009b344550bc1aa6ccbfa1d7f4": Template(STAR3_T2I, "star3", False),
    "07e00af4fc464c7ab55ff906f8acf1b7": Template(STAR3_I2I, "star3", True),
    "6f7c4652458d4802969f8d089cf5b91f": Template(CUSTOM_T2I, "f1", False),
    "63b72710c9574457ba303d9d9b8df8bd": Template(CUSTOM_I2I, "f1", True),
    "e10adc3949ba59abbe56e057f20f883e": Template(CUSTOM_T2I, "sd", False),
    "9c7d531dc75f476aa833b3d452b8f7ad": Template(CUSTOM_I2I, "sd", True),
    "bf085132c7134622895b783b520b39ff": Template(CUSTOM_T2I, "qwen", False),
    "fe9928fde1b4491c9b360dd24aa2b115": Template(KONTEXT_T2I, "kontext", False),
    "1c0a9712b3d84e1b8a9f49514a46d88c": Template(KONTEXT_I2I, "kontext", True),
    "0b6bad2fd350433ebb5abc7eb91f2ec9": Template(SEEDREAM, "seedream", False),
}


def parse_submit(body: Any, path: str, config: SimulatorConfig) -> Job:
    """Check a submit body for the endpoint `path`; raises LiblibError with the real codes."""
    if not isinstance(body, dict):
        raise LiblibError(100000, "invalid parameters: the body must be a JSON object")
    if path == COMFY_APP:
        return comfyui.parse(body)
    template = body.get("templateUuid")
    if template is None or template == "":
        raise missing("templateUuid")
    if not isinstance(template, str):
        raise invalid("templateUuid", "must be a string")
    params = body.get("generateParams")
    if params is None:
        raise missing("generateParams")
    if not isinstance(params, dict):
        raise invalid("generateParams", "must be a JSON object")
    found = TEMPLATES.get(template)
    if found is None or found.path != path:
        raise LiblibError(100120, f"template does not exist: {template}")
    if found.family == "star3":
        return _star3(params, template, found.img2img)
    if found.family == "kontext":
        return _kontext(params, template, found.img2img)
    if found.family == "seedream":
        return _seedream(params, template, config)
    return _custom(params, template, found)


def _seed(params: dict[str, Any]) -> int | None:
    return integer(params, "seed", -1, 9999999999)


def _star3(params: dict[str, Any], template: str, img2img: bool) -> Job:
    prompt = text(params, "prompt", required=True)
    size = params.get("imageSize")
    if size is not None:
        if not isinstance(size, dict):
            raise invalid("imageSize", "must be an object {width, height}")
        width = integer(size, "width", 512, 2048)
        height = integer(size, "height", 512, 2048)
        if width is None or height is None:
            raise missing("imageSize.width and imageSize.height")
    elif "aspectRatio" in params:
        ratio = params["aspectRatio"]
        if ratio not in ASPECT_RATIOS:
            raise invalid("aspectRatio", f"must be one of {', '.join(ASPECT_RATIOS)}")
        width, height = ASPECT_RATIOS[ratio]
    else:
        raise missing("aspectRatio or imageSize")
    if params.get("imgCount") is None:
        raise missing("imgCount")
    count = integer(params, "imgCount", 1, 4) or 1
    integer(params, "steps", 1, 60)
    inputs: list[str] = []
    control = params.get("controlnet")
    if control is not None:
        if not isinstance(control, dict) or control.get("controlType") not in CONTROL_TYPES:
            raise invalid("controlnet.controlType", f"must be one of {', '.join(sorted(CONTROL_TYPES))}")
        inputs.append(url(control, "controlImage"))
    if img2img:
        inputs.append(url(params, "sourceImage"))
    return Job("webui", "star3", template, prompt, width, height, count, _seed(params), inputs)


def _custom(params: dict[str, Any], template: str, found: Template) -> Job:
    """The custom-model lines (F.1, SD1.5/XL) and Qwen-Image, which share the webui text2img path."""
    qwen = found.family == "qwen"
    checkpoint = text(params, "checkPointId", required=found.family != "f1", limit=64) or F1_CHECKPOINT
    if qwen and checkpoint != QWEN_CHECKPOINT:
        raise invalid("checkPointId", f"must be {QWEN_CHECKPOINT} (Qwen-Image)")
    prompt = text(params, "prompt", required=True)
    text(params, "negativePrompt", required=False)
    side_max, side_default = (2048, 1328) if qwen else (1536, 512)
    width = integer(params, "width", 128, side_max, side_default) or side_default
    height = integer(params, "height", 128, side_max, side_default) or side_default
    count = integer(params, "imgCount", 1, 4, 1) or 1
    integer(params, "steps", 1, 60)
    integer(params, "clipSkip", 1, 12)
    integer(params, "sampler", 0, 100)
    integer(params, "randnSource", 0, 1)
    integer(params, "restoreFaces", 0, 1)
    number(params, "cfgScale", 1.0, 15.0)
    seed = _seed(params)
    networks = params.get("additionalNetwork")
    if networks is not None:
        if not isinstance(networks, list) or len(networks) > 5:
            raise invalid("additionalNetwork", "must be a list of at most 5 {modelId, weight}")
        for network in networks:
            if not isinstance(network, dict) or not isinstance(network.get("modelId"), str):
                raise invalid("additionalNetwork.modelId", "must be a string")
            number(network, "weight", -4.0, 4.0)
    hires = params.get("hiResFixInfo")
    if hires is not None and not qwen:
        if not isinstance(hires, dict):
            raise invalid("hiResFixInfo", "must be an object")
        width = integer(hires, "resizedWidth", 128, 2048, width) or width
        height = integer(hires, "resizedHeight", 128, 2048, height) or height
    inputs: list[str] = []
    if found.img2img:
        inputs.append(url(params, "sourceImage"))
        integer(params, "mode", 0, 4)
        if params.get("mode") not in (None, 0, 4):
            raise invalid("mode", "must be 0 (img2img) or 4 (inpaint)")
        number(params, "denoisingStrength", 0.0, 1.0)
        width = integer(params, "resizedWidth", 128, 1536, width) or width
        height = integer(params, "resizedHeight", 128, 1536, height) or height
    return Job("webui", found.family, template, prompt, width, height, count, seed, inputs)


def _kontext(params: dict[str, Any], template: str, img2img: bool) -> Job:
    prompt = text(params, "prompt", required=True)
    model = choice(params, "model", ("pro", "max"), "max")
    width, height = KONTEXT_SIZES[choice(params, "aspectRatio", tuple(KONTEXT_SIZES), "1:1")]
    count = integer(params, "imgCount", 1, 4, 1) or 1
    number(params, "guidance_scale", 1.0, 20.0)
    inputs: list[str] = []
    if img2img:
        inputs = url_list(params, "image_list", 1, 1 if model == "pro" else 4)
    return Job("unified", f"kontext-{model}", template, prompt, width, height, count, _seed(params), inputs)


def _seedream(params: dict[str, Any], template: str, config: SimulatorConfig) -> Job:
    prompt = text(params, "prompt", required=True)
    model = choice(params, "model", (SEEDREAM_40, SEEDREAM_45), SEEDREAM_40)
    width = integer(params, "width", 1, SEEDREAM_SIDE_MAX, 2048) or 2048
    height = integer(params, "height", 1, SEEDREAM_SIDE_MAX, 2048) or 2048
    _seedream_size(model, width, height, config)
    count = integer(params, "imgCount", 1, SEEDREAM_MAX_IMAGES, 1) or 1
    choice(params, "sequentialImageGeneration", ("disabled", "auto"), "disabled")
    integer(params, "promptMagic", 0, 1)
    references = url_list(params, "referenceImages", 1, 10 if model == SEEDREAM_40 else 14, required=False)
    if len(references) + count > SEEDREAM_MAX_IMAGES:
        raise invalid(
            "imgCount", f"plus referenceImages must be at most {SEEDREAM_MAX_IMAGES} images, got {count}"
        )
    # "auto" lets the model decide how many images, up to imgCount: the emulator always makes imgCount.
    return Job(
        "unified",
        "seedream",
        template,
        prompt,
        width,
        height,
        count,
        _seed(params),
        references,
        {"model": model},
    )


def _seedream_size(model: str, width: int, height: int, config: SimulatorConfig) -> None:
    """Seedream's size rule of `model` (providers.md notes; 4.0's rule is `liblib_seedream_size_rules`)."""
    pixels = width * height
    if model == SEEDREAM_45:
        if not 3_686_400 <= pixels <= 4096 * 4096:
            raise invalid("width*height", f"must be in [3686400, 16777216] for {model}, got {pixels}")
        if not 1 / 16 <= width / height <= 16:
            raise invalid("width/height", f"must be in [1/16, 16] for {model}")
    elif config.liblib_seedream_size_rules == "newer":
        if not (512 <= width <= 4096 and 512 <= height <= 4096) or pixels > 2048 * 2048:
            raise invalid(
                "width and height", f"must be in [512, 4096] with width*height <= 2048² for {model}"
            )
    elif not (1024 <= width <= 4096 and 1024 <= height <= 4096) or not 1024**2 <= pixels <= 4096**2:
        raise invalid(
            "width and height", f"must be in [1024, 4096] with width*height in [1024², 4096²] for {model}"
        )


def status_kinds(path: str) -> frozenset[StatusKind]:
    """Which tasks a status path answers: the unified path every task, webui/status every task but ComfyUI ones
    (as before 2026), the two ComfyUI spellings only ComfyUI tasks."""
    if path == "/api/generate/status":
        return frozenset({"webui", "unified", "comfy"})
    if path in comfyui.STATUS_PATHS:
        return frozenset({"comfy"})
    return frozenset({"webui", "unified"})
