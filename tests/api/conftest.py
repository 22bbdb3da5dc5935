"""Fixtures of the HTTP API tests: a daemon with authentication on, two tenants and their credentials.

- alice: an API key configured in the settings (as its digest), and JWTs (HS256 and RS256) with ``sub=alice``;
- bob: an API key added to the database's ``api_keys`` collection, and JWTs with ``sub=bob``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from imaged.auth import ApiKeys, key_digest
from imaged.daemon import Daemon
from imaged.settings import Settings
from imaged.simulator import Simulator

from ..conftest import make_daemon, make_settings
from ..support import Bus

ISSUER = "https://issuer.example.test"
AUDIENCE = "imaged-tests"
HS256_SECRET = "an-hs256-secret-of-at-least-32-bytes-for-tests"
ALICE_KEY = "alice-settings-key-0123456789abcdef"


@dataclass
class Credentials:
    """Ways to authenticate as each tenant."""

    rsa_private: rsa.RSAPrivateKey
    bob_key: str = ""

    def token(
        self,
        tenant: str,
        alg: str = "HS256",
        *,
        expires_in: float = 300,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        **claims: Any,
    ) -> str:
        payload: dict[str, Any] = {
            "sub": tenant,
            "iss": issuer,
            "aud": audience,
            "iat": int(time.time()),
            "exp": int(time.time() + expires_in),
            **claims,
        }
        key: Any = HS256_SECRET if alg == "HS256" else self.rsa_private
        return jwt.encode(payload, key, algorithm=alg)

    def headers(self, tenant: str, via: str = "key") -> dict[str, str]:
        """Authorization headers for a tenant: via "key", "hs256" or "rs256"."""
        if via == "key":
            credential = ALICE_KEY if tenant == "alice" else self.bob_key
        else:
            credential = self.token(tenant, via.upper())
        return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="session")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def auth_settings(
    namespace: str, image_dir: Path, simulator: Simulator, private: rsa.RSAPrivateKey, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "api_keys": {"alice": key_digest(ALICE_KEY)},
        "api_key_cache_s": 0.0,
        "jwt_secret": SecretStr(HS256_SECRET),
        "jwt_public_key": public_pem(private),
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "sync_wait_s": 20.0,
        "create_rate_per_s": 0.0,
        **overrides,
    }
    return make_settings(namespace, image_dir, simulator, **values)


@pytest.fixture
def api_settings(
    namespace: str, tmp_path: Path, simulator: Simulator, rsa_private: rsa.RSAPrivateKey
) -> Settings:
    return auth_settings(namespace, tmp_path / "images", simulator, rsa_private)


@pytest.fixture
async def api_daemon(api_settings: Settings, simulator: Simulator, bus: Bus) -> AsyncIterator[Daemon]:
    d = make_daemon(api_settings, simulator)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def creds(api_daemon: Daemon, rsa_private: rsa.RSAPrivateKey) -> Credentials:
    _, bob_key = await ApiKeys(api_daemon.store.db["api_keys"]).add("bob", label="tests")
    return Credentials(rsa_private, bob_key=bob_key)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
