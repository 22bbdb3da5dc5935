"""Authentication building blocks without services: digests, owner propagation, JWT configuration, rate limit."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from imaged.auth import (
    Authenticator,
    AuthError,
    JwtVerifier,
    RateLimiter,
    amqp_user,
    is_loopback,
    key_digest,
    new_api_key,
)
from imaged.cli.output import redact
from imaged.diagnose import mask_url
from imaged.errors import ConfigError
from imaged.settings import Settings

pytestmark = pytest.mark.timeout(10)


def settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


def test_key_digests() -> None:
    assert key_digest("k") == hashlib.sha256(b"k").hexdigest()
    assert key_digest("k", "pepper") == hmac.new(b"pepper", b"k", hashlib.sha256).hexdigest()
    key_id, key = new_api_key()
    assert key.startswith(f"imk_{key_id}_") and len(key) > 40 and "." not in key


def test_amqp_user_and_loopback() -> None:
    assert amqp_user("amqp://guest:guest@127.0.0.1:5672/") == "guest"
    assert amqp_user("amqp://im%40ged:pw@host/") == "im@ged"
    assert amqp_user("amqp://127.0.0.1/") == "guest"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")


def test_settings_keys_must_be_digests() -> None:
    with pytest.raises(ConfigError, match="not a SHA-256 hex digest"):
        Authenticator(settings(api_keys={"alice": "plain-key"}), None)
    with pytest.raises(ConfigError, match="not a valid name"):
        Authenticator(settings(api_keys={"bad tenant": key_digest("x")}), None)
    auth = Authenticator(settings(api_keys={"alice": [key_digest("a1"), key_digest("a2").upper()]}), None)
    assert auth.configured_in_settings and len(auth.digests) == 2


def test_jwt_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        JwtVerifier.from_settings(settings(jwt_secret=SecretStr("short")))
    with pytest.raises(ConfigError, match="ISSUER and IMAGED_JWT_AUDIENCE"):
        JwtVerifier.from_settings(settings(jwt_secret=SecretStr("x" * 32)))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        JwtVerifier.from_settings(settings(jwt_public_key="nope", jwt_issuer="i", jwt_audience="a"))
    with pytest.raises(ConfigError, match="cannot read"):
        JwtVerifier.from_settings(
            settings(jwt_public_key_file=tmp_path / "missing.pem", jwt_issuer="i", jwt_audience="a")
        )
    assert JwtVerifier.from_settings(settings()) is None


async def test_open_mode_without_anything_configured() -> None:
    auth = Authenticator(settings(), None)
    await auth.start()
    assert auth.open
    who = await auth.authenticate(None)
    assert who.tenant is None and who.can_see("anyone")


async def test_bearer_parsing() -> None:
    auth = Authenticator(settings(api_keys={"alice": key_digest("alice-key")}), None)
    await auth.start()
    assert not auth.open
    assert (await auth.authenticate("Bearer alice-key")).tenant == "alice"
    assert (await auth.authenticate("bearer   alice-key ")).tenant == "alice"
    for header in (None, "", "alice-key", "Basic alice-key", "Bearer ", "Bearer wrong"):
        with pytest.raises(AuthError):
            await auth.authenticate(header)


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # buckets are per tenant
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert RateLimiter(0.0, 1).take("a") == 0.0  # rate 0: no limit


def test_urls_are_masked() -> None:
    assert mask_url("amqp://guest:s3cret@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert mask_url("mongodb://u:p@h1:1,h2:2/db?replicaSet=rs&password=x") == (
        "mongodb://u:***@h1:1,h2:2/db?replicaSet=rs&password=***"
    )
    assert mask_url("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert "s3cret" not in redact("failed for s3cret", ["s3cret"])
