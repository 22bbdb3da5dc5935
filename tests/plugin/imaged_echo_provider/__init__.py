"""A minimal imaged provider plugin, written from the README alone: every task succeeds at once with ``n``
copies of a configured image URL.

Settings (``IMAGED_ECHO_*``): ``API_KEY`` (a secret) and ``IMAGE_URL`` (a URL serving a PNG, such as the
emulator's image route): without both the provider is not configured. And the limits every provider has.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from imaged import (
    Credential,
    InvalidRequest,
    ModelSpec,
    PollResult,
    Provider,
    ProviderImage,
    ProviderSettings,
    ProviderState,
    provider_config,
)

MAX_IMAGES = 4


class EchoSettings(ProviderSettings):
    """Read from IMAGED_ECHO_* environment variables and the .env file."""

    model_config = provider_config("IMAGED_ECHO_")
    api_key: SecretStr | None = None  # IMAGED_ECHO_API_KEY
    image_url: str = ""  # IMAGED_ECHO_IMAGE_URL
    max_in_flight: int = Field(4, ge=1)
    submit_per_second: float = 50.0
    poll_per_second: float | None = None


class EchoProvider(Provider):
    """Answers every task with the configured image, ``n`` times."""

    name: ClassVar[str] = "echo"
    settings_model = EchoSettings
    settings: EchoSettings
    first_poll_delay_s: ClassVar[float] = 0.05
    max_poll_interval_s: ClassVar[float] = 0.1

    def credentials(self) -> list[Credential]:
        # No key (or no image to echo): not configured, so its models are unavailable.
        settings = self.settings
        if settings.api_key is None or not settings.image_url:
            return []
        return [Credential("echo-1", settings.api_key, None, settings.image_url, settings.max_in_flight)]

    def validate(self, spec: ModelSpec, parameters: dict[str, Any]) -> dict[str, Any]:
        prompt = parameters.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("parameters.prompt: a non-empty string is required")
        n = parameters.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            raise InvalidRequest(f"parameters.n: an integer from 1 to {MAX_IMAGES} is required")
        return {"prompt": prompt, "n": n}

    def describe(self, spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": params["prompt"]}

    async def submit(self, credential: Credential, spec: ModelSpec, params: dict[str, Any]) -> str:
        return f"echo-{secrets.token_hex(8)}"  # an echo: nothing to call

    async def poll(
        self, credential: Credential, spec: ModelSpec, provider_task_id: str, params: dict[str, Any]
    ) -> PollResult:
        n = int(params["n"])
        images = [ProviderImage(index=i, url=credential.base_url) for i in range(n)]
        usage = {"image_count": n}
        return PollResult(ProviderState.SUCCEEDED, progress=1.0, images=images, info={"usage": usage})
