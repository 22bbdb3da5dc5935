"""LiblibAI request parameters: strict models per line, and where a request's fields go."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ...errors import InvalidRequest
from ..params import between, check_count, check_side, check_size, check_text, field_names, got, one_of

#: the official F.1 checkpoint, used when a custom F.1 request names none (the catalog may override it)
OFFICIAL_F1_CHECKPOINT = "412b427ddb674b4dbab9e5abd5ae6057"

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "square": (1024, 1024),
    "portrait": (768, 1024),
    "landscape": (1280, 720),
}


def _check_side(value: int | None, info: ValidationInfo) -> int | None:
    return None if value is None else check_side(value, info)


class ImageSize(BaseModel):
    """Star-3 ``imageSize``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    width: StrictInt
    height: StrictInt

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int, info: ValidationInfo) -> int | None:
        return _check_side(value, info)


class Controlnet(BaseModel):
    """Star-3 ``controlnet``; the control image is a URL passed on, never fetched."""

    model_config = ConfigDict(extra="allow", strict=True)

    controlType: Literal["line", "depth", "pose", "IPAdapter", "subject"]
    controlImage: StrictStr


AspectRatio = Literal["square", "portrait", "landscape"]


class Star3TextToImage(BaseModel):
    """Star-3 Alpha text-to-image ``generateParams``; unknown keys in ``generateParams`` are passed through."""

    model_config = ConfigDict(extra="allow", strict=True)

    prompt: StrictStr
    aspectRatio: AspectRatio | None = None
    imageSize: ImageSize | None = None
    width: StrictInt | None = Field(None, description="with height: the original service's form of imageSize")
    height: StrictInt | None = None
    imgCount: StrictInt = 1
    steps: Annotated[StrictInt, between(1, 60)] | None = None
    controlnet: Controlnet | None = None

    #: when neither aspectRatio nor imageSize is given
    default_aspect: ClassVar[AspectRatio | None] = "square"

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        return check_text(value, info)

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _check_side(value, info)

    @field_validator("imgCount")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return check_count(value, info)

    @model_validator(mode="after")
    def _size(self, info: ValidationInfo) -> Star3TextToImage:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.width is not None and self.height is not None:
            if self.imageSize is not None:
                raise ValueError("give either imageSize or width and height, not both")
            self.imageSize = ImageSize(width=self.width, height=self.height)
            self.width = self.height = None
        if self.aspectRatio is not None and self.imageSize is not None:
            raise ValueError("give either aspectRatio or imageSize (width and height), not both")
        if self.aspectRatio is None and self.imageSize is None:
            if self.default_aspect is None:
                raise ValueError(
                    "the output size is required: give aspectRatio, or width and height (or imageSize)"
                )
            self.aspectRatio = self.default_aspect
        if self.imageSize is not None:
            check_size(self.imageSize.width, self.imageSize.height, info)
        return self


class Star3ImageToImage(Star3TextToImage):
    """Star-3 Alpha image-to-image ``generateParams``; ``sourceImage`` is a URL passed on, never fetched."""

    sourceImage: StrictStr

    default_aspect: ClassVar[AspectRatio | None] = None

    @field_validator("sourceImage")
    @classmethod
    def _source(cls, value: str) -> str:
        return _check_url(value)


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be a public http(s) URL of the image")
    return value


class AdditionalNetwork(BaseModel):
    """A LoRA applied to a custom model."""

    model_config = ConfigDict(extra="allow", strict=True)

    modelId: StrictStr
    weight: Annotated[StrictFloat, between(-4.0, 4.0)] | None = None


class HiResFixInfo(BaseModel):
    """High-resolution fix of a custom model's text-to-image."""

    model_config = ConfigDict(extra="allow", strict=True)

    hiresSteps: Annotated[StrictInt, between(1, 60)] | None = None
    hiresDenoisingStrength: Annotated[StrictFloat, between(0.0, 1.0)] | None = None
    upscaler: StrictInt | None = None
    resizedWidth: StrictInt | None = None
    resizedHeight: StrictInt | None = None


ZeroOrOne = Annotated[StrictInt, one_of(0, 1)]


class CustomParams(BaseModel):
    """Custom-model (F.1, SD1.5, SDXL) ``generateParams``; image-to-image when ``sourceImage`` is given.

    Unknown keys inside ``generateParams`` are passed through: LiblibAI accepts more than are checked here.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    checkPointId: StrictStr | None = None
    vaeId: StrictStr | None = None
    prompt: StrictStr
    negativePrompt: StrictStr | None = None
    clipSkip: Annotated[StrictInt, between(1, 12)] | None = None
    sampler: Annotated[StrictInt, Field(ge=0)] | None = None
    steps: Annotated[StrictInt, between(1, 60)] | None = None
    cfgScale: Annotated[StrictFloat, between(1.0, 15.0)] | None = None
    width: StrictInt | None = None
    height: StrictInt | None = None
    imgCount: StrictInt = 1
    randnSource: ZeroOrOne | None = None
    seed: Annotated[StrictInt, between(-1, 9999999999)] | None = None
    restoreFaces: ZeroOrOne | None = None
    additionalNetwork: Annotated[list[AdditionalNetwork], Field(max_length=5)] | None = None
    hiResFixInfo: HiResFixInfo | None = None
    controlNet: Annotated[list[dict[str, Any]], Field(max_length=4)] | None = None
    # image-to-image
    sourceImage: StrictStr | None = None
    resizeMode: StrictInt | None = None
    resizedWidth: StrictInt | None = None
    resizedHeight: StrictInt | None = None
    mode: Annotated[StrictInt, one_of(0, 4)] | None = None  # 0 img2img, 4 inpaint
    denoisingStrength: Annotated[StrictFloat, between(0.0, 1.0)] | None = None
    inpaintParam: dict[str, Any] | None = None

    @field_validator("prompt", "negativePrompt")
    @classmethod
    def _text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return check_text(
            value, info, negative=info.field_name != "prompt", required=info.field_name == "prompt"
        )

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _check_side(value, info)

    @field_validator("imgCount")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return check_count(value, info)

    @field_validator("sourceImage")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


#: ``baseModelType`` values and the template family they select
BASE_MODEL_FAMILIES: dict[str, str] = {
    "f1": "f1",
    "sd": "sd",
    "sd15": "sd",
    "sd1.5": "sd",
    "xl": "sd",
    "sdxl": "sd",
}


def merge(
    parameters: dict[str, Any], model: type[BaseModel], own: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Top-level LiblibAI fields merged into ``generateParams``; where each key was given; what is wrong."""
    nested = parameters.get("generateParams", {})
    if not isinstance(nested, dict):
        raise InvalidRequest(
            f"parameters.generateParams: must be an object (got {got(nested, as_json=True)})"
        )
    known = field_names(model)
    problems = [
        f"parameters.{key}: is not a known parameter (other LiblibAI fields go inside generateParams; "
        f"expected one of: {', '.join([*own, 'generateParams', *known])})"
        for key in parameters
        if key not in known and key not in own and key != "generateParams"
    ]
    merged = dict(nested)
    where = dict.fromkeys(nested, "parameters.generateParams")
    for key, value in parameters.items():
        if key in own or key == "generateParams" or key not in known:
            continue
        if key in nested and nested[key] != value:
            problems.append(f"parameters.{key}: also given inside generateParams, with a different value")
        merged[key] = value
        where[key] = "parameters"
    return merged, where, problems
