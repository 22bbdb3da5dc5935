"""The DashScope client: settings, credentials, submit, poll and cancel."""

from __future__ import annotations

import logging
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr

from ...catalog import ModelSpec
from ...contract import ErrorCategory
from ...errors import ConfigError, InvalidRequest
from ..base import (
    Credential,
    PollResult,
    Provider,
    ProviderSettings,
    malformed,
    provider_config,
    request_json,
)
from ..params import validate_model
from .errors import error_from_reply
from .params import FAMILIES, PARAMS, family_of, output_size, request_body
from .replies import parse_task

log = logging.getLogger(__name__)

DEFAULT_ALIYUN_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"

#: DashScope base URL per region. Keys are per region: a key on another region's URL gets 401 InvalidApiKey.
REGION_BASE_URLS: dict[str, str] = {
    "cn-beijing": DEFAULT_ALIYUN_BASE_URL,  # China (Beijing), the default
    "ap-southeast-1": "https://dashscope-intl.aliyuncs.com/api/v1",  # International (Singapore)
}


class AliyunSettings(ProviderSettings):
    """DashScope's settings: ``IMAGED_ALIYUN_*`` (the key also as ``ALIYUN_API_KEY``, the original service's)."""

    model_config = provider_config("IMAGED_ALIYUN_")

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("IMAGED_ALIYUN_API_KEY", "ALIYUN_API_KEY", "api_key")
    )
    extra_api_keys: list[SecretStr] = Field(
        default_factory=list, description="more DashScope keys (JSON list), each with its own limits"
    )
    base_url: str = Field(DEFAULT_ALIYUN_BASE_URL, description="the region's API (keys are per region)")
    max_in_flight: int = Field(2, ge=1, description="tasks in flight per key, across all replicas")
    submit_per_second: float = Field(2.0, gt=0, description="submits per second per key")
    poll_per_second: float | None = Field(20.0, gt=0, description="task queries per second per account")


class AliyunProvider(Provider):
    """DashScope asynchronous image tasks."""

    name = "aliyun"
    settings_model = AliyunSettings
    settings: AliyunSettings
    first_poll_delay_s = 3.0  # tasks take about 10 s
    max_poll_interval_s = 8.0
    #: per HTTP request, connection to last byte
    request_timeout_s: ClassVar[float] = 30.0

    def credentials(self) -> list[Credential]:
        """The main key, then the extra ones; each is its own account with its own limits."""
        keys = [self.settings.api_key, *self.settings.extra_api_keys]
        usable = [key for key in keys if key is not None and key.get_secret_value()]
        return [
            Credential(
                name=f"aliyun-{number}",
                key=key,
                secret=None,
                base_url=self.settings.base_url.rstrip("/"),
                max_in_flight=self.settings.max_in_flight,
            )
            for number, key in enumerate(usable, start=1)
        ]

    @classmethod
    def check_model(cls, spec: ModelSpec) -> None:
        family = family_of(spec)
        if family not in FAMILIES:
            raise ConfigError(
                f"model {spec.name!r}: family must be one of {', '.join(FAMILIES)} (got {family!r})"
            )
        model = PARAMS.get((family, spec.kind))
        if model is None:
            raise ConfigError(f"model {spec.name!r}: the {family} family serves no kind {spec.kind!r}")
        if spec.options:
            raise ConfigError(f"model {spec.name!r}: DashScope models take no options")
        if "size" in model.model_fields:
            size = spec.defaults.get("size")
            if not isinstance(size, str):
                raise ConfigError(f"model {spec.name!r}: defaults.size is required (models differ in theirs)")
            problem = spec.accepts.size.text_problem(size) if spec.accepts.size is not None else None
            if problem is not None:
                raise ConfigError(f"model {spec.name!r}: defaults.size {size!r}: {problem}")

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        model = PARAMS.get((family_of(spec), spec.kind))
        if model is None:
            raise InvalidRequest(f"model {spec.name!r}: provider aliyun does not serve kind {spec.kind!r}")
        data = dict(parameters)
        for key, value in spec.defaults.items():
            if key in model.model_fields:
                data.setdefault(key, value)
        validated = validate_model(model, data, accepts=spec.accepts)
        return validated.model_dump(mode="json", exclude_none=True)

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        size = output_size(spec, params)
        described = {"prompt": params.get("prompt"), "width": size and size[0], "height": size and size[1]}
        return {key: value for key, value in described.items() if value is not None}

    def _headers(self, credential: Credential, *, json_body: bool) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {credential.key.get_secret_value()}"}
        if json_body:
            headers["Content-Type"] = "application/json"
            headers["X-DashScope-Async"] = "enable"
        return headers

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        what = "DashScope submit"
        reply = await request_json(
            self.session,
            "POST",
            f"{credential.base_url}{spec.endpoint}",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=True),
            json_body=request_body(spec, params),
        )
        log.debug("%s %s: HTTP %s", what, spec.name, reply.status)
        if reply.status != 200:
            raise error_from_reply(reply, what)
        body = reply.body
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, dict):
            if isinstance(body, dict) and isinstance(body.get("code"), str):
                raise error_from_reply(reply, what)
            raise malformed(what, "no 'output' object", reply.status)
        task_id = output.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise malformed(what, "no task_id", reply.status)
        return task_id

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        what = "DashScope task query"
        reply = await request_json(
            self.session,
            "GET",
            f"{credential.base_url}/tasks/{quote(provider_task_id, safe='')}",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=False),
        )
        if reply.status != 200:
            raise error_from_reply(reply, what)
        if not reply.is_json:
            raise malformed(what, "body is not JSON", reply.status)
        return parse_task(reply.body, params)

    async def cancel(self, credential: Credential, spec: ModelSpec, provider_task_id: str) -> bool:
        """Cancel a task still PENDING. ``False`` when DashScope refuses (the task already runs or ended)."""
        what = "DashScope cancel"
        reply = await request_json(
            self.session,
            "POST",
            f"{credential.base_url}/tasks/{quote(provider_task_id, safe='')}/cancel",
            what=what,
            timeout_s=self.request_timeout_s,
            headers=self._headers(credential, json_body=False),
        )
        if reply.status == 200:
            return True
        error = error_from_reply(reply, what)
        if error.retryable or error.category in (ErrorCategory.AUTH, ErrorCategory.QUOTA):
            raise error
        log.info("DashScope refused to cancel task %s: %s", provider_task_id, error.message)
        return False
