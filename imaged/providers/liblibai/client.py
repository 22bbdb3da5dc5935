"""The LiblibAI client: settings, credentials, submit and poll (LiblibAI has no cancel)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError

from ...catalog import ModelSpec
from ...contract import ErrorCategory
from ...errors import ConfigError, InvalidRequest, ProviderError
from ..base import (
    MAX_IMAGES_PER_TASK,
    Credential,
    PollResult,
    Provider,
    ProviderSettings,
    ProviderState,
    malformed,
    provider_config,
    request_json,
)
from ..params import got, validate_model
from .errors import envelope_data
from .lines import closest_ratio, comfy_batch, comfy_size
from .params import ASPECT_SIZES, BASE_MODEL_FAMILIES, OFFICIAL_F1_CHECKPOINT, merge
from .routes import STATUS_PATHS, LiblibOptions, fixed_params, params_model, route
from .signing import signed_query
from .status import parse_status

log = logging.getLogger(__name__)

DEFAULT_LIBLIBAI_BASE_URL = "https://openapi.liblibai.cloud"


class LiblibSettings(ProviderSettings):
    """LiblibAI's settings: ``IMAGED_LIBLIBAI_*`` (the key pair also as ``LIBLIBAI_ACCESS_KEY`` and
    ``LIBLIBAI_SECRET_KEY``, the original service's)."""

    model_config = provider_config("IMAGED_LIBLIBAI_")

    access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("IMAGED_LIBLIBAI_ACCESS_KEY", "LIBLIBAI_ACCESS_KEY", "access_key")
    )
    secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("IMAGED_LIBLIBAI_SECRET_KEY", "LIBLIBAI_SECRET_KEY", "secret_key")
    )
    extra_keys: list[SecretStr] = Field(
        default_factory=list, description='more LiblibAI key pairs (JSON list of "ACCESS:SECRET")'
    )
    base_url: str = Field(DEFAULT_LIBLIBAI_BASE_URL, description="LiblibAI's API")
    max_in_flight: int = Field(5, ge=1, description="tasks in flight per key pair, across all replicas")
    submit_per_second: float = Field(1.0, gt=0, description="submits per second per key pair")
    poll_per_second: float | None = Field(None, gt=0, description="status queries are not limited")


class LiblibProvider(Provider):
    """LiblibAI generation tasks (no cancel: LiblibAI offers none)."""

    name = "liblibai"
    settings_model = LiblibSettings
    settings: LiblibSettings
    first_poll_delay_s = 4.0
    max_poll_interval_s = 10.0
    #: per HTTP request, connection to last byte
    request_timeout_s: ClassVar[float] = 30.0

    def credentials(self) -> list[Credential]:
        """The main key pair, then the extra ``ACCESS:SECRET`` pairs; each is its own account."""
        pairs: list[tuple[SecretStr, SecretStr]] = []
        access, secret = self.settings.access_key, self.settings.secret_key
        if (
            access is not None
            and secret is not None
            and access.get_secret_value()
            and secret.get_secret_value()
        ):
            pairs.append((access, secret))
        for extra in self.settings.extra_keys:
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
                base_url=self.settings.base_url.rstrip("/"),
                max_in_flight=self.settings.max_in_flight,
            )
            for number, (key, key_secret) in enumerate(pairs, start=1)
        ]

    @classmethod
    def check_model(cls, spec: ModelSpec) -> None:
        try:
            options = LiblibOptions.model_validate(spec.options)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            where = ".".join(map(str, problem["loc"]))
            raise ConfigError(f"model {spec.name!r}: options.{where}: {problem['msg']}") from None
        family = spec.family or "webui"
        if family not in STATUS_PATHS:
            raise ConfigError(
                f"model {spec.name!r}: family must be one of {', '.join(STATUS_PATHS)} (got {family!r})"
            )
        line = options.line_of(spec)
        if line == "kontext":
            missing = {"t2i", "i2i"} - (options.endpoints.keys() & options.templates.keys())
            if missing:
                raise ConfigError(
                    f"model {spec.name!r}: kontext needs options.endpoints and options.templates for t2i and i2i"
                )
        elif line not in ("custom", "comfyui") and not options.template:
            raise ConfigError(f"model {spec.name!r}: options.template (the templateUuid) is required")
        if line == "qwen-image" and not options.checkpoint:
            raise ConfigError(f"model {spec.name!r}: options.checkpoint (the fixed checkPointId) is required")

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        options = LiblibOptions.model_validate(spec.options)
        line = options.line_of(spec)
        model = params_model(spec, options)
        custom = line == "custom"
        if line == "comfyui":  # node ids are the workflow's own keys: anything but workflowUuid is a node
            merged, where, problems = merge(
                parameters, model, tuple(k for k in parameters if k != "workflowUuid")
            )
            merged |= {k: v for k, v in parameters.items() if k != "generateParams"}
        else:
            merged, where, problems = merge(parameters, model, ("baseModelType",) if custom else ())
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
        fixed = fixed_params(options)
        for key in fixed:
            if key in merged and merged[key] != fixed[key]:
                problems.append(f"parameters.{key}: is fixed by model {spec.name!r} ({fixed[key]})")
            merged.pop(key, None)
        try:
            validated = validate_model(model, merged, accepts=spec.accepts, where=where)
        except InvalidRequest as exc:
            problems.append(exc.message)
        if problems:
            raise InvalidRequest("; ".join(problems))
        normalised["generateParams"] = validated.model_dump(mode="json", exclude_none=True) | fixed
        route(spec, normalised)
        return normalised

    @classmethod
    def openai_parameters(
        cls,
        spec: ModelSpec,
        *,
        prompt: str,
        n: int | None,
        size: tuple[int, int] | str | None,
        images: Sequence[str] = (),
        mask: str | None = None,
    ) -> dict[str, Any]:
        """LiblibAI's names: ``imgCount``, ``width``/``height`` (Kontext: the closest ``aspectRatio``), and the input
        images as each line takes them; a ComfyUI workflow takes its prompt and size in its nodes (extras)."""
        line = LiblibOptions.model_validate(spec.options).line_of(spec)
        if line == "comfyui":
            return {}
        params: dict[str, Any] = {"prompt": prompt}
        if n is not None:
            params["imgCount"] = n
        if isinstance(size, tuple):
            if line == "kontext":
                params["aspectRatio"] = closest_ratio(*size)
            else:
                params["width"], params["height"] = size
        if images:
            name = {"kontext": "image_list", "seedream": "referenceImages"}.get(line)
            if name is not None:
                params[name] = list(images)
            else:
                params["sourceImage"] = images[0]
        return params

    def images_requested(self, spec: ModelSpec, params: dict[str, Any]) -> int:
        if LiblibOptions.model_validate(spec.options).line_of(spec) == "comfyui":
            return min(comfy_batch(params.get("generateParams", {})), MAX_IMAGES_PER_TASK)
        return super().images_requested(spec, params)

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        generate = params.get("generateParams", {})
        width, height = generate.get("width"), generate.get("height")
        size = generate.get("imageSize")
        if isinstance(size, dict):
            width, height = size.get("width"), size.get("height")
        elif generate.get("aspectRatio") in ASPECT_SIZES:
            width, height = ASPECT_SIZES[generate["aspectRatio"]]
        elif (comfy := comfy_size(generate)) is not None:
            width, height = comfy
        elif width is None and (default := spec.default_size()) is not None:
            width, height = default
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

    async def _status(self, credential: Credential, paths: tuple[str, ...], task_id: str) -> dict[str, Any]:
        """The task's status from the family's status path, or its fallback where the first is missing."""
        for number, path in enumerate(paths, start=1):
            try:
                return await self._call(credential, path, {"generateUuid": task_id}, "LiblibAI status")
            except ProviderError as exc:
                if exc.provider_status != 404 or number == len(paths):
                    raise
                log.info("LiblibAI status path %s answered 404: trying %s", path, paths[number])
        raise AssertionError("unreachable: the last path raises")

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
        paths = STATUS_PATHS[spec.family or "webui"]
        try:
            data = await self._status(credential, paths, provider_task_id)
        except ProviderError as exc:
            if exc.category is ErrorCategory.CONTENT_POLICY:
                # 100055 on a status query is how the task ended (result blocked), not a failed call.
                return PollResult(ProviderState.FAILED, progress=1.0, error=exc.info())
            raise
        return parse_status(data)
