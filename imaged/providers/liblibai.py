"""LiblibAI open API: Star-3 Alpha text-to-image and image-to-image, and custom F.1 / SD1.5 / SDXL models.

Every request is a signed ``POST`` (HMAC-SHA1 of ``path&timestamp&nonce``, URL-safe base64 without padding,
sent as query parameters) answered with an envelope ``{"code", "msg", "data"}``. API facts: ``providers.md`` §2.

The original service put LiblibAI's ``generateParams`` fields at the top of ``parameters`` (and, for the
custom model, ``baseModelType`` beside a nested ``generateParams``). ``validate`` merges both places into one
``generateParams`` object and stores ``{"generateParams": {...}}`` (plus ``baseModelType`` for custom models);
``submit`` picks the endpoint and template from the catalog.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..catalog import ModelSpec
from ..contract import ErrorCategory, ErrorInfo
from ..errors import InvalidRequest, ProviderError
from .base import Credential, HttpReply, PollResult, Provider, ProviderImage, ProviderState, request_json
from .params import between, check_text, field_names, got, limit, one_of, validate_model

log = logging.getLogger(__name__)

STATUS_PATH = "/api/generate/webui/status"
#: the official F.1 checkpoint, used when a custom F.1 request names none (the catalog may override it)
OFFICIAL_F1_CHECKPOINT = "412b427ddb674b4dbab9e5abd5ae6057"
NONCE_BYTES = 16  # 32 hex characters

# --- signing ------------------------------------------------------------------------------------------------


def sign(path: str, secret_key: str, timestamp_ms: int, nonce: str) -> str:
    """LiblibAI's signature: HMAC-SHA1 over ``path&timestamp&nonce``, URL-safe base64, ``=`` stripped."""
    message = f"{path}&{timestamp_ms}&{nonce}".encode()
    digest = hmac.new(secret_key.encode(), message, hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signed_query(
    path: str, access_key: str, secret_key: str, *, timestamp_ms: int | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The query parameters that authenticate one request; fresh timestamp and nonce unless given."""
    timestamp = time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(NONCE_BYTES) if nonce is None else nonce
    return {
        "AccessKey": access_key,
        "Signature": sign(path, secret_key, timestamp, nonce),
        "Timestamp": str(timestamp),
        "SignatureNonce": nonce,
    }


# --- error mapping ------------------------------------------------------------------------------------------

_CODES: dict[int, tuple[ErrorCategory, bool, str]] = {
    401: (
        ErrorCategory.AUTH,
        False,
        "signature verification failed (check AccessKey, SecretKey and the clock)",
    ),
    403: (ErrorCategory.AUTH, False, "access denied"),
    429: (ErrorCategory.RATE_LIMITED, True, "too many requests"),
    100000: (ErrorCategory.INVALID_REQUEST, False, "invalid parameters"),
    100010: (ErrorCategory.AUTH, False, "AccessKey expired"),
    100020: (ErrorCategory.AUTH, False, "user does not exist"),
    100021: (ErrorCategory.QUOTA, False, "insufficient points"),
    100030: (ErrorCategory.INVALID_REQUEST, False, "input image unreachable"),
    100031: (ErrorCategory.CONTENT_POLICY, False, "input image has prohibited content"),
    100032: (ErrorCategory.INVALID_REQUEST, False, "input image download failed"),
    100050: (ErrorCategory.INVALID_REQUEST, False, "parameter completeness check failed"),
    100051: (ErrorCategory.PROVIDER_ERROR, False, "task does not exist"),
    100052: (ErrorCategory.CONTENT_POLICY, False, "sensitive content in the prompt"),
    100053: (ErrorCategory.INVALID_REQUEST, False, "model not in the allowed list"),
    100054: (ErrorCategory.RATE_LIMITED, True, "concurrent-task limit: waiting for a slot"),
    100055: (ErrorCategory.CONTENT_POLICY, False, "sensitive content in the result"),
    100120: (ErrorCategory.INVALID_REQUEST, False, "template does not exist"),
    200000: (ErrorCategory.PROVIDER_ERROR, True, "internal error"),
    200001: (ErrorCategory.INVALID_REQUEST, False, "model does not exist"),
    210000: (ErrorCategory.PROVIDER_ERROR, True, "external service failed"),
}

# A 403 whose message speaks of points or the API plan is a quota problem, not a key problem.
_QUOTA_WORDS = ("point", "plan", "balance", "quota", "积分", "套餐", "余额", "点数")


def classify(code: int, message: str = "") -> tuple[ErrorCategory, bool, str]:
    """Category, retryability and meaning of a LiblibAI code (an HTTP status or an envelope ``code``)."""
    if code == 403 and any(word in message.lower() for word in _QUOTA_WORDS):
        return ErrorCategory.QUOTA, False, "API plan or points missing"
    if code in _CODES:
        return _CODES[code]
    if 500 <= code <= 599:
        return ErrorCategory.PROVIDER_ERROR, True, f"HTTP {code}"
    return ErrorCategory.PROVIDER_ERROR, False, "unknown error"


def error_for(
    code: int, message: str | None, *, http_status: int | None = None, retry_after: float | None = None
) -> ProviderError:
    """The :class:`ProviderError` of a LiblibAI code; the message starts with what the code means."""
    category, retryable, meaning = classify(code, message or "")
    detail = f"LiblibAI code {code}" + (f": {message}" if message else "")
    return ProviderError(
        f"{meaning} ({detail})",
        code=str(code),
        category=category,
        retryable=retryable,
        provider_status=http_status,
        retry_after=retry_after,
    )


def _envelope_code(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def malformed(what: str, detail: str, status: int | None = None) -> ProviderError:
    return ProviderError(
        f"{what}: malformed response ({detail})",
        code="malformed_response",
        retryable=True,
        provider_status=status,
    )


def envelope_data(reply: HttpReply, what: str) -> dict[str, Any]:
    """``data`` of a successful envelope; otherwise the error the HTTP status or the envelope ``code`` means.

    An envelope code the table knows wins over the HTTP status (an HTTP 400 carrying 100000 is "invalid
    parameters"); an unknown one on a non-200 reply falls back on the HTTP status.
    """
    code = _envelope_code(reply.body)
    body = reply.body if isinstance(reply.body, dict) else {}
    message = body.get("msg") if isinstance(body.get("msg"), str) else None
    if reply.status != 200:
        use = code if code is not None and code != 0 and code in _CODES else reply.status
        if not reply.is_json and message is None:
            message = f"{what} answered HTTP {reply.status} without a JSON body"
        raise error_for(use, message, http_status=reply.status, retry_after=reply.retry_after)
    if not reply.is_json:
        raise malformed(what, "body is not JSON", reply.status)
    if code is None:
        raise malformed(what, "no envelope 'code'", reply.status)
    if code != 0:
        raise error_for(code, message, http_status=reply.status, retry_after=reply.retry_after)
    data = body.get("data")
    if not isinstance(data, dict):
        raise malformed(what, "no 'data' object", reply.status)
    return data


# --- status payloads ----------------------------------------------------------------------------------------

_AUDIT_APPROVED = 3
_AUDIT_BLOCKED = 4


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return min(1.0, max(0.0, float(value)))


def parse_status(data: Any) -> PollResult:
    """The ``data`` of a status reply as a :class:`PollResult`.

    generateStatus 1 is queued, 2/3/4 running, 5 succeeded, 6 failed, 7 timed out (points refunded). Of a
    finished task only approved images are delivered; blocked ones (auditStatus 4) are recorded in
    ``failed_images``, and a task whose every image was blocked fails with ``content_policy``.
    """
    what = "LiblibAI status"
    if not isinstance(data, dict):
        raise malformed(what, "no 'data' object")
    status = data.get("generateStatus")
    if isinstance(status, bool) or not isinstance(status, int) or not 1 <= status <= 7:
        raise malformed(what, f"unknown generateStatus {status!r}")
    progress = _number(data.get("percentCompleted"))
    info = {
        key: data[key]
        for key in ("pointsCost", "accountBalance")
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool)
    }
    if status == 1:
        return PollResult(state=ProviderState.QUEUED, progress=progress, info=info)
    if status in (2, 3, 4):
        return PollResult(state=ProviderState.RUNNING, progress=progress, info=info)
    if status == 6:
        reason = data.get("generateMsg") if isinstance(data.get("generateMsg"), str) else ""
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="generate_failed",
            message=f"LiblibAI: generation failed: {reason or 'no reason given'}",
            retryable=False,
        )
        return PollResult(state=ProviderState.FAILED, progress=progress, error=error, info=info)
    if status == 7:
        error = ErrorInfo(
            category=ErrorCategory.TIMEOUT,
            code="generate_timeout",
            message="LiblibAI: the task timed out at the provider (points refunded)",
            retryable=False,
        )
        return PollResult(state=ProviderState.FAILED, progress=progress, error=error, info=info)

    images: list[ProviderImage] = []
    failed: list[dict[str, Any]] = []
    raw_images = data.get("images")
    for position, image in enumerate(raw_images if isinstance(raw_images, list) else []):
        if not isinstance(image, dict):
            failed.append({"index": position, "code": "malformed_response", "message": "not an object"})
            continue
        url = image.get("imageUrl")
        seed = image.get("seed") if isinstance(image.get("seed"), int) else None
        audit = image.get("auditStatus") if isinstance(image.get("auditStatus"), int) else None
        entry: dict[str, Any] = {"index": position, "seed": seed, "auditStatus": audit}
        if audit == _AUDIT_BLOCKED:
            failed.append(
                entry | {"code": "audit_blocked", "message": "blocked by LiblibAI's content review"}
            )
        elif audit not in (None, _AUDIT_APPROVED):
            failed.append(
                entry | {"code": "audit_not_approved", "message": f"review ended with status {audit}"}
            )
        elif not isinstance(url, str) or not url:
            failed.append(entry | {"code": "no_url", "message": "no imageUrl"})
        else:
            images.append(ProviderImage(index=len(images), url=url, seed=seed, audit_status=audit))
    if images:
        return PollResult(
            state=ProviderState.SUCCEEDED, progress=1.0, images=images, failed_images=failed, info=info
        )
    # `images` lists approved images only: a finished task with none at all had every image blocked by review.
    if not failed or any(entry.get("code") == "audit_blocked" for entry in failed):
        error = ErrorInfo(
            category=ErrorCategory.CONTENT_POLICY,
            code="audit_blocked",
            message="LiblibAI: every image was blocked by its content review",
            retryable=False,
        )
    else:
        error = ErrorInfo(
            category=ErrorCategory.PROVIDER_ERROR,
            code="no_images",
            message="LiblibAI: the task succeeded without any deliverable image",
            retryable=False,
        )
    return PollResult(state=ProviderState.FAILED, progress=1.0, failed_images=failed, error=error, info=info)


# --- parameters ---------------------------------------------------------------------------------------------

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "square": (1024, 1024),
    "portrait": (768, 1024),
    "landscape": (1280, 720),
}


def _check_side(value: int | None, info: ValidationInfo) -> int | None:
    if value is None:
        return None
    low, high = limit(info, "side_min", 512), limit(info, "side_max", 2048)
    if not low <= value <= high:
        raise ValueError(f"must be {low}..{high}")
    return value


def _check_count(value: int, info: ValidationInfo) -> int:
    high = limit(info, "count_max", 4)
    if not 1 <= value <= high:
        raise ValueError(f"must be 1..{high}")
    return value


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
        return check_text(value, info, "prompt_max", 2000, required=True)

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        return _check_side(value, info)

    @field_validator("imgCount")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return _check_count(value, info)

    @model_validator(mode="after")
    def _size(self) -> Star3TextToImage:
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
        return check_text(value, info, "prompt_max", 2000, required=info.field_name == "prompt")

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        low, high = limit(info, "side_min", 128), limit(info, "side_max", 1536)
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}")
        return value

    @field_validator("imgCount")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        return _check_count(value, info)

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

_PARAMS_BY_KIND: dict[str, type[BaseModel]] = {
    "text-to-image": Star3TextToImage,
    "image-to-image": Star3ImageToImage,
    "custom": CustomParams,
}


def route(spec: ModelSpec, params: dict[str, Any]) -> tuple[str, str]:
    """The endpoint and templateUuid of a validated request, from the catalog."""
    if spec.kind != "custom":
        endpoint, template, variant = spec.endpoint, spec.template, "template"
    else:
        generate = params.get("generateParams", {})
        family = BASE_MODEL_FAMILIES.get(str(params.get("baseModelType", "sd")).lower(), "sd")
        mode = "i2i" if generate.get("sourceImage") else "t2i"
        variant = f"{family}_{mode}"
        endpoint = spec.endpoints.get(mode) or (spec.endpoint if mode == "t2i" else "")
        template = spec.templates.get(variant)
    if not endpoint or not template:
        raise InvalidRequest(f"model {spec.name!r}: the catalog has no endpoint or template for {variant}")
    return endpoint, template


def _merge(
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


# --- the client ---------------------------------------------------------------------------------------------


class LiblibProvider(Provider):
    """LiblibAI generation tasks (no cancel: LiblibAI offers none)."""

    name = "liblibai"
    first_poll_delay_s = 4.0
    max_poll_interval_s = 10.0
    #: per HTTP request, connection to last byte
    request_timeout_s: ClassVar[float] = 30.0

    def credentials(self) -> list[Credential]:
        """The main key pair, then the extra ``ACCESS:SECRET`` pairs; each is its own account."""
        pairs: list[tuple[SecretStr, SecretStr]] = []
        access, secret = self.settings.liblibai_access_key, self.settings.liblibai_secret_key
        if (
            access is not None
            and secret is not None
            and access.get_secret_value()
            and secret.get_secret_value()
        ):
            pairs.append((access, secret))
        for extra in self.settings.liblibai_extra_keys:
            extra_access, sep, extra_secret = extra.get_secret_value().partition(":")
            if sep and extra_access and extra_secret:
                pairs.append((SecretStr(extra_access), SecretStr(extra_secret)))
            else:
                log.error("ignoring a LiblibAI extra key that is not of the form ACCESS:SECRET")
        return [
            Credential(
                name=f"liblibai-{number}",
                key=key,
                secret=key_secret,
                base_url=self.settings.liblibai_base_url.rstrip("/"),
                max_in_flight=self.settings.liblibai_max_in_flight,
            )
            for number, (key, key_secret) in enumerate(pairs, start=1)
        ]

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        model = _PARAMS_BY_KIND.get(spec.kind)
        if model is None:
            raise InvalidRequest(f"model {spec.name!r}: provider liblibai does not serve kind {spec.kind!r}")
        custom = spec.kind == "custom"
        merged, where, problems = _merge(parameters, model, ("baseModelType",) if custom else ())
        for key, value in spec.defaults.items():
            if key in model.model_fields:
                merged.setdefault(key, value)
        normalised: dict[str, Any] = {}
        if custom:
            base_type = parameters.get("baseModelType", spec.defaults.get("baseModelType", "sd"))
            family = BASE_MODEL_FAMILIES.get(base_type.lower()) if isinstance(base_type, str) else None
            if family is None:
                choices = ", ".join(BASE_MODEL_FAMILIES)
                problems.append(f"parameters.baseModelType: must be one of {choices} (got {got(base_type)})")
            else:
                normalised["baseModelType"] = str(base_type).lower()
            if family == "f1":
                merged.setdefault("checkPointId", spec.defaults.get("f1CheckPointId", OFFICIAL_F1_CHECKPOINT))
            elif family == "sd" and not merged.get("checkPointId"):
                problems.append(
                    f"parameters.checkPointId: is required for baseModelType {base_type!r} (SD1.5/XL models)"
                )
        try:
            validated = validate_model(model, merged, limits=spec.limits, where=where)
        except InvalidRequest as exc:
            problems.append(exc.message)
        if problems:
            raise InvalidRequest("; ".join(problems))
        normalised["generateParams"] = validated.model_dump(mode="json", exclude_none=True)
        route(spec, normalised)
        return normalised

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        generate = params.get("generateParams", {})
        width, height = generate.get("width"), generate.get("height")
        size = generate.get("imageSize")
        if isinstance(size, dict):
            width, height = size.get("width"), size.get("height")
        elif generate.get("aspectRatio") in ASPECT_SIZES:
            width, height = ASPECT_SIZES[generate["aspectRatio"]]
        described = {"prompt": generate.get("prompt"), "width": width, "height": height}
        return {key: value for key, value in described.items() if value is not None}

    async def _call(
        self, credential: Credential, path: str, body: dict[str, Any], what: str
    ) -> dict[str, Any]:
        if credential.secret is None:
            raise ProviderError(
                f"credential {credential.name} has no SecretKey",
                code="no_secret_key",
                category=ErrorCategory.AUTH,
            )
        query = signed_query(path, credential.key.get_secret_value(), credential.secret.get_secret_value())
        reply = await request_json(
            self.session,
            "POST",
            f"{credential.base_url}{path}",
            what=what,
            timeout_s=self.request_timeout_s,
            params=query,
            json_body=body,
        )
        log.debug("%s: HTTP %s", what, reply.status)
        return envelope_data(reply, what)

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        endpoint, template = route(spec, params)
        body = {"templateUuid": template, "generateParams": params["generateParams"]}
        data = await self._call(credential, endpoint, body, "LiblibAI submit")
        task_id = data.get("generateUuid")
        if not isinstance(task_id, str) or not task_id:
            raise malformed("LiblibAI submit", "no generateUuid", 200)
        return task_id

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        try:
            data = await self._call(
                credential, STATUS_PATH, {"generateUuid": provider_task_id}, "LiblibAI status"
            )
        except ProviderError as exc:
            if exc.category is ErrorCategory.CONTENT_POLICY:
                # 100055 on a status query is how the task ended (result blocked), not a failed call.
                return PollResult(ProviderState.FAILED, progress=1.0, error=exc.info())
            raise
        return parse_status(data)
