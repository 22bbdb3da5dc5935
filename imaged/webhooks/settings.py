"""Webhook settings: environment variables ``IMAGED_WEBHOOK_*`` (and the ``.env`` file), checked at start.

A value that does not validate stops the start with a message naming the variable, never its value: the secret
and the tenants' URLs (which may carry tokens) are not to be printed.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..contract import WEBHOOK_URL_MAX_CHARS
from ..errors import ConfigError
from ..netguard import AddressPolicy, RefusedURL, check_url
from ..settings import describe_settings_error
from .signing import decode_secret

ENV_PREFIX = "IMAGED_WEBHOOK_"
#: named in refusals, so that an operator knows what relaxes the policy
NETWORKS_SETTING = "IMAGED_WEBHOOK_ALLOWED_NETWORKS"


class WebhookSettings(BaseSettings):
    """Everything the webhook dispatcher reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # pydantic shows a rejected value in its errors; a rejected secret must not be shown anywhere
        hide_input_in_errors=True,
    )

    secret: SecretStr | None = Field(
        None, description="signing secret, whsec_ + base64 of 24..64 random bytes (unset: nothing is sent)"
    )
    retry_s: float = Field(
        86400.0, gt=0, description="a delivery is retried this long after its first attempt"
    )
    first_retry_s: float = Field(5.0, gt=0, description="the first wait before a retry; each next one is 4x")
    timeout_s: float = Field(10.0, gt=0, description="one attempt: connect, send, and the answer's headers")
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) webhook URLs may reach besides public addresses, e.g. 10.0.0.0/8",
    )
    tenant_urls: dict[str, str] = Field(
        default_factory=dict,
        description="tenant (task owner) -> URL that gets its tasks' terminal events when a request names none",
    )
    concurrency: int = Field(16, ge=1, le=1000, description="deliveries in flight per replica")
    max_response_bytes: int = Field(
        64 * 1024, ge=0, description="what is read of a receiver's answer (then dropped) before the next"
    )

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_secret(value.get_secret_value())  # raises ValueError without the value
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        AddressPolicy(value, what="webhook", setting=None)  # raises ValueError naming the bad entry
        return value

    @field_validator("tenant_urls")
    @classmethod
    def _tenant_urls(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # Checked now, against the same policy as deliveries, so that a default that can never be delivered to
        # stops the start instead of failing every terminal event of a tenant. (allowed_networks, declared
        # before, is validated first; when it is invalid, that is the error to report.)
        if "allowed_networks" not in info.data:
            return value
        policy = AddressPolicy(info.data["allowed_networks"], what="webhook", setting=NETWORKS_SETTING)
        for tenant, url in value.items():
            if len(url) > WEBHOOK_URL_MAX_CHARS:
                raise ValueError(
                    f"tenant {tenant!r}: the URL is longer than {WEBHOOK_URL_MAX_CHARS} characters"
                )
            try:
                check_url(url, policy)
            except RefusedURL as exc:  # names the host and why, never the whole URL
                raise ValueError(f"tenant {tenant!r}: {exc.message}") from None
        return value

    def policy(self) -> AddressPolicy:
        """Which addresses deliveries may reach: public ones, and the allowed networks."""
        return AddressPolicy(self.allowed_networks, what="webhook", setting=NETWORKS_SETTING)

    def secret_key(self) -> bytes | None:
        """The HMAC key (the secret's decoded bytes), or None when no secret is set."""
        return None if self.secret is None else decode_secret(self.secret.get_secret_value())


def load_webhook_settings(**overrides: Any) -> WebhookSettings:
    """The settings from the environment (``overrides`` win); :class:`ConfigError` naming the variable if invalid."""
    try:
        return WebhookSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_settings_error(exc, ENV_PREFIX)}") from None
