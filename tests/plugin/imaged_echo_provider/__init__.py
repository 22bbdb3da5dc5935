"""A minimal imaged provider plugin: every task succeeds at once with one image from a configured URL.

Its only configuration is the environment variable ``IMAGED_ECHO_IMAGE_URL`` (a URL serving a PNG, such as the
emulator's image route); it needs no key.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, ClassVar

from pydantic import SecretStr

from imaged.catalog import ModelSpec
from imaged.errors import InvalidRequest
from imaged.providers import Credential, PollResult, Provider, ProviderImage, ProviderState


class EchoProvider(Provider):
    """Answers every task with the configured image."""

    name: ClassVar[str] = "echo"
    first_poll_delay_s: ClassVar[float] = 0.05
    max_poll_interval_s: ClassVar[float] = 0.1

    def credentials(self) -> list[Credential]:
        url = os.environ.get("IMAGED_ECHO_IMAGE_URL")
        if not url:
            return []
        return [Credential("echo-1", SecretStr(""), None, url, max_in_flight=4)]

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        prompt = parameters.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest("parameters.prompt: a non-empty string is required")
        return {"prompt": prompt}

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"]}

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        return f"echo-{secrets.token_hex(8)}"

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        image = ProviderImage(index=0, url=credential.base_url)
        return PollResult(
            ProviderState.SUCCEEDED, progress=1.0, images=[image], info={"usage": {"image_count": 1}}
        )
