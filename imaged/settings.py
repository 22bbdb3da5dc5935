"""Settings: environment variables (prefix ``IMAGED_``), a ``.env`` file, and defaults.

The original image service's variable names (``MONGODB_URL``, ``ALIYUN_API_KEY``, ...) are accepted as aliases so
its deployments keep working unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def describe_settings_error(exc: ValidationError, env_prefix: str = "IMAGED_") -> str:
    """Which settings are wrong and why, named as environment variables, without their values (secrets)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]] or ["settings"]
        head = loc[0] if loc[0].isupper() else f"{env_prefix}{loc[0].upper()}"  # an alias is its own name
        parts.append(f"{'.'.join([head, *loc[1:]])}: {err['msg']}")
    return "; ".join(parts)


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything imaged reads from its environment; built once at the entry point and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGED_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # Broker
    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        validation_alias=_alias("IMAGED_AMQP_URL", "AMQP_URL", "RABBITMQ_URL"),
    )
    amqp_prefix: str = Field("imaged", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    delivery_limit: int = Field(5, ge=1, description="deliveries of a request before it is dead-lettered")
    lane_delivery_limit: int = Field(
        20,
        ge=1,
        description="deliveries of a lane message (one per interrupted run of a task) before dead-lettering",
    )

    # Database
    mongodb_url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017"),
        validation_alias=_alias("IMAGED_MONGODB_URL", "MONGODB_URL"),
    )
    mongodb_db: str = Field("imaged", pattern=r"^[A-Za-z0-9_-]{1,63}$")

    # Images
    storage: Literal["local", "s3"] = Field(
        "local", description="where images are kept: local files (IMAGED_IMAGE_DIR) or a bucket (IMAGED_S3_*)"
    )
    image_dir: Path = Path("data/images")
    image_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    image_allowed_hosts: list[str] = Field(
        default_factory=list, description="if set, only image URLs on these hosts are downloaded"
    )
    download_timeout_s: float = Field(120.0, gt=0)
    download_allowed_networks: list[str] = Field(
        default_factory=list,
        description="networks (CIDR) image downloads may reach besides public addresses, e.g. a local emulator",
    )

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = Field(8001, ge=0, le=65535)
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="a request whose headers are not complete by then is dropped (slow clients)"
    )
    http_body_timeout_s: float = Field(30.0, gt=0, description="a request body not received by then is 408")

    public_url: str | None = Field(
        None,
        description="the address clients reach this HTTP API at, for the links it hands out (default: the one "
        "each request came in on)",
    )

    # OpenAI-compatible images API (/v1)
    openai_wait_s: float = Field(300.0, gt=0, description="how long /v1/images/* waits for the images")
    openai_default_model: str | None = Field(None, description="the model of a /v1 request that names none")
    openai_max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest image (or mask) /v1/images/edits accepts"
    )
    file_link_ttl_s: int = Field(3600, ge=60, description="lifetime of a link to a local image file")

    # Catalog
    catalog_path: Path | None = Field(
        None, description="models.toml; defaults to the one shipped with imaged"
    )

    # Tasks
    task_timeout_s: float = Field(600.0, gt=0, description="default deadline of a task")
    max_request_bytes: int = Field(256 * 1024, ge=1024)
    shutdown_grace_s: float = Field(30.0, ge=0)
    retention_days: float = Field(
        30.0, ge=0, description="finished tasks are deleted after this; 0 keeps them"
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="how often the retention pass runs (it reads many tasks)"
    )
    retention_delete_images: bool = Field(
        False, description="retention also deletes the images (files or objects) of the tasks it removes"
    )
    submit_unknown_policy: Literal["resubmit", "fail"] = Field(
        "resubmit",
        description="a task found submitted without a recorded provider task id: submit again, or fail it",
    )
    lease_ttl_s: float = Field(
        30.0, gt=0, description="task claims and provider slots of a dead replica free after this"
    )
    sync_wait_s: float = Field(
        120.0, gt=0, description="how long POST with is_async=false waits for the result"
    )
    intake_prefetch: int = Field(32, ge=1)
    reply_to_prefixes: list[str] = Field(
        default_factory=lambda: ["amq.gen-", "amq_", "amq.rabbitmq.reply-to"],
        description="queues a request's reply_to may name (prefixes); the default: exclusive reply queues only",
    )

    # Providers (each provider's own settings live with it: see imaged/providers)
    credential_cooldown_s: float = Field(
        600.0, gt=0, description="how long a credential that answered auth/quota errors stays out of rotation"
    )
    poll_first_delay_s: float | None = Field(
        None, ge=0, description="override the provider's first poll delay"
    )
    poll_max_interval_s: float = Field(10.0, gt=0)

    # Logging
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"

    # HTTP API and authentication (nothing configured: the API is open and must stay on loopback)
    api_keys: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="tenant -> SHA-256 hex digest(s) of its API keys, as JSON (see `imaged keys hash`)",
    )
    api_key_pepper: SecretStr | None = Field(
        None, description="if set, API key digests are HMAC-SHA256 with this secret instead of plain SHA-256"
    )
    api_key_cache_s: float = Field(
        10.0, ge=0, description="how long a key looked up in the database is trusted"
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret (at least 32 bytes)")
    jwt_public_key: str | None = Field(None, description="RS256 public key, PEM text")
    jwt_public_key_file: Path | None = Field(None, description="RS256 public key, PEM file")
    jwt_issuer: str | None = Field(None, description="required `iss` of accepted JWTs")
    jwt_audience: str | None = Field(None, description="required `aud` of accepted JWTs")
    jwt_tenant_claim: str = Field("sub", min_length=1, description="the JWT claim that names the tenant")
    jwt_leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf/iat")
    create_rate_per_s: float = Field(
        5.0, ge=0, description="task creations per second per tenant (0: no limit)"
    )
    create_burst: int = Field(20, ge=1, description="task creations a tenant may make at once")
    auth_failures_per_s: float = Field(
        5.0, ge=0, description="failed authentications allowed per second per client address (0: no limit)"
    )
    auth_failures_burst: int = Field(
        100, ge=1, description="failed authentications a client address may make at once"
    )
