"""The DashScope models the emulator serves and the checks of their submit bodies (providers.md §1 and
"Model families, 2026"): one `Model` per name, saying on which endpoint it is served and what it accepts.

Parsing is pure: it needs only the body and a few settings, and raises `ApiError` with the real codes. Input
images are never fetched; the handler asks the settings whether a URL counts as unreachable.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from .config import SimulatorConfig

Endpoint = Literal["text2image", "image2image", "image-generation"]
"""The submit endpoint (classic text2image/image2image, or the messages protocol); also the task's `kind`."""

SEED_MAX = 2147483647
NEGATIVE_MAX = 500
WAN25_MAX_PIXELS = 1440 * 1440
WAN25_I2I_PIXELS = (768 * 768, 1280 * 1280)
SIZE_TIERS = {"1K": (1280, 1280), "2K": (2048, 2048)}
"""wan2.6-image size tiers; the docs leave their pixels undocumented, this is the emulator's choice."""
QWEN_SIZES = ("1664*928", "1472*1140", "1328*1328", "1140*1472", "928*1664")
WANX_V1_SIZES = ("1024*1024", "720*1280", "1280*720")
EDIT_FUNCTIONS = frozenset(
    {
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "remove_watermark",
    }
)
_SIZE = re.compile(r"^(\d{1,5})\*(\d{1,5})$")


class ApiError(Exception):
    """A DashScope error answer: HTTP status plus `{code, message, request_id}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        body = {"code": self.code, "message": self.message, "request_id": request_id()}
        return web.json_response(body, status=self.status, headers=self.headers)


def request_id() -> str:
    return str(uuid.uuid4())


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


# size rules -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sides:
    """Each side in [low, high]."""

    low: int = 512
    high: int = 1440


@dataclass(frozen=True)
class Choices:
    """One of a fixed list of `W*H` strings."""

    sizes: tuple[str, ...]


@dataclass(frozen=True)
class Pixels:
    """W*H in [low, high] (low None: the configured wan2.5 bound) and W/H in [1/ratio, ratio]."""

    low: int | None
    high: int
    ratio: float = 4.0


@dataclass(frozen=True)
class Tiers:
    """A tier name (`SIZE_TIERS`) or a W*H inside `pixels`."""

    pixels: Pixels


SizeRule = Sides | Choices | Pixels | Tiers


@dataclass(frozen=True)
class Model:
    name: str
    endpoint: Endpoint
    size: SizeRule
    default_size: str = "1024*1024"
    n_max: int = 4
    n_default: int = 4
    prompt: int = 500
    """Characters kept of the prompt (longer prompts are truncated, not refused)."""
    images: tuple[int, int] = (0, 0)
    """How many input images (`input.images`, or image parts of the message) the model takes."""
    sync: bool = False
    """Answers a classic submit without the async header synchronously (wan2.2)."""


_WAN25 = Pixels(None, WAN25_MAX_PIXELS)
_MODELS = [
    Model("wanx-v1", "text2image", Choices(WANX_V1_SIZES), prompt=800),
    Model("wanx2.0-t2i-turbo", "text2image", Sides(), prompt=800),
    *(Model(name, "text2image", Sides()) for name in ("wanx2.1-t2i-turbo", "wanx2.1-t2i-plus")),
    *(Model(name, "text2image", Sides()) for name in ("wan2.1-t2i-turbo", "wan2.1-t2i-plus")),
    *(Model(name, "text2image", Sides(), sync=True) for name in ("wan2.2-t2i-flash", "wan2.2-t2i-plus")),
    Model("wan2.5-t2i-preview", "text2image", _WAN25, "1280*1280", prompt=2000),
    *(
        Model(name, "text2image", Choices(QWEN_SIZES), "1328*1328", 1, 1, prompt=800)
        for name in ("qwen-image", "qwen-image-plus")
    ),
    Model("wanx2.1-imageedit", "image2image", Sides(), n_default=1, prompt=800),
    Model(
        "wan2.5-i2i-preview",
        "image2image",
        Pixels(*WAN25_I2I_PIXELS),
        "1280*1280",
        n_default=1,
        prompt=2000,
        images=(1, 3),
    ),
    Model("wan2.6-t2i", "image-generation", _WAN25, "1280*1280", prompt=2100),
    Model("wan2.6-image", "image-generation", Tiers(_WAN25), "1K", prompt=2000, images=(1, 4)),
]
MODELS: dict[str, Model] = {model.name: model for model in _MODELS}
INTERLEAVE_IMAGES = (0, 1)
"""wan2.6-image input images with `enable_interleave: true`; it then makes `max_images` (1..5) images."""


@dataclass
class Job:
    """A validated submit."""

    model: str
    endpoint: Endpoint
    prompt: str
    width: int
    height: int
    n: int
    seed: int
    prompt_extend: bool
    function: str | None = None
    inputs: list[str] = field(default_factory=list)
    """Input image URLs (or data: URIs), for the unreachable check."""
    interleave: bool = False


# the two body shapes ----------------------------------------------------------------------------------------------


def find_model(body: Any, endpoint: Endpoint) -> Model:
    """The body's model, checked against the endpoint: 404 ModelNotFound, 400 on the wrong endpoint."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    name = body.get("model")
    if name is None or name == "":
        raise ApiError(400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.')
    if not isinstance(name, str):
        raise invalid("Parameter model must be a string.")
    model = MODELS.get(name)
    if model is None:
        raise ApiError(404, "ModelNotFound", f"Model not found ({name})!")
    if model.endpoint != endpoint:
        raise invalid(f"Model {name} does not support the {endpoint} task.")
    return model


def _inputs_and_params(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = body.get("input")
    if not isinstance(inputs, dict) or not inputs:
        raise ApiError(400, "BadRequest.EmptyInput", 'Required parameter "input" missing from request.')
    params = body.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid("parameters must be a JSON object.")
    return inputs, params


def parse_classic(body: Any, endpoint: Endpoint, seed_default: int, config: SimulatorConfig) -> Job:
    """Check a classic image-synthesis body (text2image or image2image) as the real API does."""
    model = find_model(body, endpoint)
    inputs, params = _inputs_and_params(body)
    prompt = _string(inputs.get("prompt"), "input.prompt", required=True)
    _negative(inputs.get("negative_prompt"), "input.negative_prompt")
    function = None
    urls: list[str] = []
    if model.name == "wanx2.1-imageedit":
        function = inputs.get("function")
        if function not in EDIT_FUNCTIONS:
            allowed = ", ".join(sorted(EDIT_FUNCTIONS))
            raise invalid(f"input.function must be one of: {allowed}")
        urls += _url(inputs, "base_image_url", required=True)
        urls += _url(inputs, "mask_image_url", required=function == "description_edit_with_mask")
    elif model.images != (0, 0):
        urls = _image_list(inputs.get("images"), "input.images", model.images)
    job = _common(model, params, prompt, seed_default, config)
    job.prompt_extend = job.prompt_extend and endpoint == "text2image"
    job.function, job.inputs = function, urls
    return job


def parse_messages(body: Any, seed_default: int, config: SimulatorConfig) -> Job:
    """Check a messages-protocol body (`image-generation`): one user message, one text part, image parts."""
    model = find_model(body, "image-generation")
    inputs, params = _inputs_and_params(body)
    messages = inputs.get("messages")
    if not isinstance(messages, list) or len(messages) != 1:
        raise invalid("input.messages must hold exactly one message.")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise invalid('input.messages[0].role must be "user".')
    content = message.get("content")
    if not isinstance(content, list) or not content:
        raise invalid("input.messages[0].content must be a non-empty list.")
    texts: list[str] = []
    images: list[Any] = []
    for part in content:
        if isinstance(part, dict) and "text" in part and "image" not in part:
            texts.append(_string(part["text"], "input.messages[0].content.text", required=True))
        elif isinstance(part, dict) and "image" in part and "text" not in part:
            images.append(part["image"])
        else:
            raise invalid("input.messages[0].content parts must be {text} or {image} objects.")
    if len(texts) != 1:
        raise invalid("input.messages[0].content must hold exactly one text part.")
    _negative(params.get("negative_prompt"), "parameters.negative_prompt")
    interleave = _flag(params, "enable_interleave", False) if model.name == "wan2.6-image" else False
    allowed = INTERLEAVE_IMAGES if interleave else model.images
    urls = _image_list(images, "input.messages[0].content.image", allowed)
    job = _common(model, params, texts[0], seed_default, config, interleave=interleave)
    job.inputs, job.interleave = urls, interleave
    return job


# shared checks ---------------------------------------------------------------------------------------------------


def _common(
    model: Model,
    params: dict[str, Any],
    prompt: str,
    seed_default: int,
    config: SimulatorConfig,
    *,
    interleave: bool = False,
) -> Job:
    width, height = parse_size(params.get("size"), model, config)
    if interleave:
        n = params.get("max_images", 1)
        if not _is_int(n) or not 1 <= n <= 5:
            raise invalid("The max_images parameter must be an integer in [1, 5].")
    else:
        n = params.get("n", model.n_default)
        if not _is_int(n) or not 1 <= n <= model.n_max:
            span = "1" if model.n_max == 1 else f"an integer in [1, {model.n_max}]"
            raise invalid(f"The n parameter must be {span} for model {model.name}.")
    seed = params.get("seed", seed_default)
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise invalid(f"The seed parameter must be an integer in [0, {SEED_MAX}].")
    _flag(params, "watermark", False)
    prompt_extend = _flag(params, "prompt_extend", True)
    limit = config.dashscope_prompt_limits.get(model.name, model.prompt)
    return Job(
        model=model.name,
        endpoint=model.endpoint,
        prompt=prompt[:limit],  # the real service truncates long prompts silently
        width=width,
        height=height,
        n=n,
        seed=seed,
        prompt_extend=prompt_extend,
    )


def parse_size(value: Any, model: Model, config: SimulatorConfig) -> tuple[int, int]:
    """The (width, height) a `size` parameter asks for, under the model's rule; raises 400 InvalidParameter."""
    rule = model.size
    if value is None:
        value = model.default_size
    if isinstance(rule, Tiers) and isinstance(value, str) and value.upper() in SIZE_TIERS:
        return SIZE_TIERS[value.upper()]
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        tiers = " or a tier (1K, 2K)" if isinstance(rule, Tiers) else ""
        raise invalid(f"The size parameter must look like 1024*1024{tiers}, got {value!r}.")
    width, height = int(match.group(1)), int(match.group(2))
    if isinstance(rule, Choices):
        if value not in rule.sizes:
            raise invalid(f"The size {value} is not supported; use one of {', '.join(rule.sizes)}.")
    elif isinstance(rule, Sides):
        if not (rule.low <= width <= rule.high and rule.low <= height <= rule.high):
            raise invalid(
                f"The size {value} is not supported: width and height must be in [{rule.low}, {rule.high}]."
            )
    else:
        pixels = rule.pixels if isinstance(rule, Tiers) else rule
        low = pixels.low if pixels.low is not None else config.dashscope_wan25_min_pixels
        if not low <= width * height <= pixels.high:
            raise invalid(
                f"The size {value} is not supported: width*height must be in [{low}, {pixels.high}]."
            )
        if not 1 / pixels.ratio <= width / height <= pixels.ratio:
            ratio = math.floor(pixels.ratio)
            raise invalid(f"The size {value} is not supported: width/height must be in [1/{ratio}, {ratio}].")
    return width, height


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: Any, name: str, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise invalid(f"Field required: {name}")
        return ""
    if not isinstance(value, str):
        raise invalid(f"Input should be a valid string: {name}")
    return value


def _negative(value: Any, name: str) -> None:
    if len(_string(value, name, required=False)) > NEGATIVE_MAX:
        raise invalid(f"{name} exceeds {NEGATIVE_MAX} characters.")


def _flag(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f"The {name} parameter must be a boolean.")
    return value


def _url(inputs: dict[str, Any], name: str, *, required: bool) -> list[str]:
    """An input image given as an http(s) URL; the emulator never fetches it."""
    value = inputs.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Field required: input.{name}")
        return []
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ApiError(400, "InvalidURL", f"The input.{name} is not a valid http(s) URL.")
    return [value]


_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+$", re.IGNORECASE)


def _image_list(value: Any, name: str, allowed: tuple[int, int]) -> list[str]:
    """A list of input images, each an http(s) URL or a `data:image/...;base64,` URI."""
    low, high = allowed
    if value is None or value == []:
        if low > 0:
            raise invalid(f"Field required: {name} ({low} to {high} images).")
        value = []
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list of image URLs.")
    if not low <= len(value) <= high:
        span = "no images" if high == 0 else f"{low} to {high} images"
        raise invalid(f"{name} takes {span}, got {len(value)}.")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"{name}[{index}] must be a string.")
        if not (item.startswith(("http://", "https://")) or _DATA_URI.match(item)):
            raise ApiError(400, "InvalidURL", f"{name}[{index}] is not an http(s) URL or a data: URI.")
    return list(value)
