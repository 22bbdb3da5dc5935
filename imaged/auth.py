"""Who is calling: API keys (stored only as digests) and JWTs, each naming a tenant; a per-tenant rate limit.

A caller sends ``Authorization: Bearer <API key or JWT>`` and becomes a tenant; tasks belong to the tenant that
created them (the ``owner`` field). API keys come from the settings (``IMAGED_API_KEYS``: tenant -> digests) or from
the MongoDB collection ``api_keys`` (``imaged keys add|list|revoke``). A key is never stored: only its SHA-256
digest, or its HMAC-SHA256 under ``IMAGED_API_KEY_PEPPER`` when one is set. JWTs are HS256 (shared secret) or
RS256 (public key); signature, expiry, issuer and audience are all checked.

With nothing configured the API is *open*: every caller sees every task, so the HTTP server must stay on loopback.
Open mode ends for good as soon as a key appears in the database; it never starts again without a restart.

Requests created over HTTP are handed to intake in the daemon's process with their tenant as owner. Requests
published on the queue belong to their AMQP ``user_id``, which RabbitMQ checks against the publishing connection's
user; no header can name another owner.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from .contract import utcnow
from .errors import ConfigError, ImagedError
from .settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "imk_"
TENANT_PATTERN = r"^[A-Za-z0-9_.@:-]{1,128}$"
_TENANT_RE = re.compile(TENANT_PATTERN)
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MIN_HS256_SECRET_BYTES = 32


class AuthError(ImagedError):
    """A caller's credentials are missing or not accepted; the message is safe to show to the caller."""


def is_valid_tenant(value: str) -> bool:
    return bool(_TENANT_RE.match(value))


def key_digest(key: str, pepper: str | None = None) -> str:
    """The stored form of an API key: SHA-256 hex, or HMAC-SHA256 hex under the pepper."""
    if pepper:
        return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key id (safe to show and log) and the key itself (shown once, never stored)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def amqp_user(amqp_url: str) -> str:
    """The user a connection made with this URL logs in as (RabbitMQ's default is ``guest``)."""
    user = urlsplit(amqp_url).username
    return unquote(user) if user else "guest"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``tenant`` is ``None`` only in open mode, where every task is visible."""

    tenant: str | None
    via: str  # "api_key", "jwt" or "open"

    def can_see(self, owner: str | None) -> bool:
        """Whether a task with this owner is visible to the caller."""
        return self.tenant is None or owner == self.tenant

    @property
    def rate_key(self) -> str:
        return self.tenant if self.tenant is not None else "-"


# -- API keys in MongoDB ------------------------------------------------------------------------------------------


class ApiKeys:
    """The ``api_keys`` collection: one document per key (``_id`` = key id), holding its digest, never the key."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("digest", ASCENDING)], name="digest", unique=True)

    async def add(self, tenant: str, *, label: str = "", pepper: str | None = None) -> tuple[str, str]:
        """Create a key for a tenant; returns (key id, key). The key is not stored and cannot be shown again."""
        if not is_valid_tenant(tenant):
            raise ValueError(f"tenant {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . @ : -")
        await self.ensure_indexes()
        for _ in range(5):
            key_id, key = new_api_key()
            doc = {
                "_id": key_id,
                "tenant": tenant,
                "label": label,
                "digest": key_digest(key, pepper),
                "scheme": "hmac-sha256" if pepper else "sha256",
                "created_at": utcnow(),
                "revoked_at": None,
            }
            try:
                await self.collection.insert_one(doc)
            except DuplicateKeyError:
                continue
            return key_id, key
        raise RuntimeError("could not allocate a unique key id")

    async def tenant_of(self, digest: str) -> str | None:
        doc = await self.collection.find_one({"digest": digest, "revoked_at": None})
        return None if doc is None else str(doc["tenant"])

    async def list(self, *, include_revoked: bool = True) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if include_revoked else {"revoked_at": None}
        cursor = self.collection.find(query).sort([("tenant", ASCENDING), ("created_at", ASCENDING)])
        return [
            {
                "key_id": doc["_id"],
                "tenant": doc.get("tenant"),
                "label": doc.get("label", ""),
                "scheme": doc.get("scheme", "sha256"),
                "created_at": doc.get("created_at"),
                "revoked_at": doc.get("revoked_at"),
            }
            async for doc in cursor
        ]

    async def revoke(self, key_id: str) -> bool:
        """Revoke an active key; False if there is no such active key."""
        result = await self.collection.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}}
        )
        return result.matched_count > 0

    async def count_active(self) -> int:
        return await self.collection.count_documents({"revoked_at": None})

    async def active_key_ids(self) -> set[str]:
        """The ids of the active keys (not secret: they are printed and listed)."""
        return {str(doc["_id"]) async for doc in self.collection.find({"revoked_at": None}, {"_id": 1})}


# -- JWT --------------------------------------------------------------------------------------------------------


class JwtVerifier:
    """Checks a JWT's signature (HS256 and/or RS256), expiry, issuer and audience; returns its tenant."""

    def __init__(
        self, keys: dict[str, Any], issuer: str, audience: str, tenant_claim: str, leeway_s: float
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway_s = leeway_s

    @property
    def algorithms(self) -> list[str]:
        return sorted(self.keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        keys: dict[str, Any] = {}
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value().encode()
            if len(secret) < MIN_HS256_SECRET_BYTES:
                raise ConfigError(f"IMAGED_JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes long")
            keys["HS256"] = secret
        pem = settings.jwt_public_key
        if settings.jwt_public_key_file is not None:
            try:
                pem = settings.jwt_public_key_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read IMAGED_JWT_PUBLIC_KEY_FILE: {exc.strerror}") from exc
        if pem:
            try:
                public_key = load_pem_public_key(pem.encode())
            except (ValueError, TypeError) as exc:
                raise ConfigError("the JWT public key is not a PEM public key") from exc
            if not isinstance(public_key, RSAPublicKey):
                raise ConfigError("the JWT public key must be an RSA key (RS256)")
            keys["RS256"] = public_key
        if not keys:
            return None
        if not settings.jwt_issuer or not settings.jwt_audience:
            raise ConfigError(
                "JWTs are configured: set IMAGED_JWT_ISSUER and IMAGED_JWT_AUDIENCE too (both are checked)"
            )
        return cls(
            keys, settings.jwt_issuer, settings.jwt_audience, settings.jwt_tenant_claim, settings.jwt_leeway_s
        )

    def verify(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token: not a JWT") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.keys:
            raise AuthError(f"invalid token: algorithm not accepted (accepted: {', '.join(self.algorithms)})")
        try:
            claims = jwt.decode(
                token,
                self.keys[alg],
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", self.tenant_claim]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("invalid token: expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("invalid token: wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("invalid token: wrong issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"invalid token: no {exc.claim!r} claim") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("invalid token: not valid yet") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("invalid token: bad signature") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token") from exc
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not is_valid_tenant(tenant):
            raise AuthError(f"invalid token: claim {self.tenant_claim!r} is not a tenant name")
        return tenant


# -- the authenticator --------------------------------------------------------------------------------------------


def _settings_digests(settings: Settings) -> dict[str, str]:
    digests: dict[str, str] = {}
    for tenant, value in settings.api_keys.items():
        if not is_valid_tenant(tenant):
            raise ConfigError(f"IMAGED_API_KEYS: tenant {tenant!r} is not a valid name")
        for digest in [value] if isinstance(value, str) else value:
            normal = digest.strip().lower()
            if not _DIGEST_RE.match(normal):
                raise ConfigError(
                    f"IMAGED_API_KEYS: the entry of tenant {tenant!r} is not a SHA-256 hex digest "
                    "(store digests, never keys: see `imaged keys hash`)"
                )
            digests[normal] = tenant
    return digests


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or raises :class:`AuthError`."""

    def __init__(
        self, settings: Settings, keys: ApiKeys | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.pepper = settings.api_key_pepper.get_secret_value() if settings.api_key_pepper else None
        self.digests = _settings_digests(settings)
        self.jwt = JwtVerifier.from_settings(settings)
        self.cache_s = settings.api_key_cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._key_ids: set[str] = set()
        self._key_ids_at = float("-inf")
        self.open = False
        self._open_checked = 0.0

    @property
    def configured_in_settings(self) -> bool:
        return bool(self.digests) or self.jwt is not None

    async def start(self) -> None:
        """Decide between open and authenticated mode (database keys count, so this needs the database)."""
        db_keys = await self.keys.count_active() if self.keys is not None else 0
        self.open = not self.configured_in_settings and db_keys == 0
        self._open_checked = self._clock()

    def describe(self) -> str:
        """The mode in one line, without secrets."""
        if self.open:
            return "open: no API keys and no JWT key configured"
        parts = []
        if self.digests:
            parts.append(f"API keys in settings for {len(set(self.digests.values()))} tenant(s)")
        if self.keys is not None:
            parts.append("API keys in the database")
        if self.jwt is not None:
            parts.append(
                f"JWT {'/'.join(self.jwt.algorithms)} (issuer {self.jwt.issuer!r}, audience {self.jwt.audience!r})"
            )
        return "on: " + ", ".join(parts)

    async def authenticate(self, authorization: str | None) -> Principal:
        if self.open and not await self._still_open():
            log.warning("an API key appeared in the database: the HTTP API now requires authentication")
        if self.open:
            return Principal(None, "open")
        token = _bearer(authorization)
        if len(token) > 8192:
            raise AuthError("invalid credentials")
        digest = key_digest(token, self.pepper)
        tenant = self._settings_tenant(digest)
        if tenant is not None:
            return Principal(tenant, "api_key")
        if token.count(".") == 2 and self.jwt is not None:
            return Principal(self.jwt.verify(token), "jwt")
        tenant = await self._database_tenant(token, digest)
        if tenant is None:
            raise AuthError("invalid credentials: unknown or revoked API key")
        return Principal(tenant, "api_key")

    async def _still_open(self) -> bool:
        now = self._clock()
        if self.keys is None or now - self._open_checked < max(self.cache_s, 1.0):
            return True
        self._open_checked = now
        if await self.keys.count_active() > 0:
            self.open = False
        return self.open

    def _settings_tenant(self, digest: str) -> str | None:
        found = None
        for known, tenant in self.digests.items():
            if hmac.compare_digest(known, digest):
                found = tenant
        return found

    async def _known_key_id(self, token: str) -> bool:
        """Whether the token names the id of an active key; a guess almost never does, and costs no lookup.

        Keys in the database all have the form ``imk_<key id>_<secret>``; the ids are known (refreshed at most
        every ``IMAGED_API_KEY_CACHE_S``, at least every second when an unknown id shows up)."""
        if self.keys is None or not token.startswith(KEY_PREFIX):
            return False
        key_id = token[len(KEY_PREFIX) :].partition("_")[0]
        if key_id in self._key_ids:
            return True
        now = self._clock()
        if now - self._key_ids_at >= max(self.cache_s, 1.0):
            self._key_ids_at = now
            self._key_ids = await self.keys.active_key_ids()
        return key_id in self._key_ids

    async def _database_tenant(self, token: str, digest: str) -> str | None:
        if self.keys is None:
            return None
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        if not await self._known_key_id(token):
            return None
        tenant = await self.keys.tenant_of(digest)
        if tenant is None:
            self._cache.pop(digest, None)
            return None
        if self.cache_s > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, tenant)
        return tenant


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("authentication required: send 'Authorization: Bearer <API key or JWT>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(
            "authentication required: use the Bearer scheme ('Authorization: Bearer <credential>')"
        )
    return token


# -- rate limit ---------------------------------------------------------------------------------------------------


class RateLimiter:
    """Token buckets per key, in process: ``rate`` tokens a second, at most ``burst`` saved up. Rate 0: no limit."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take one token; returns 0 if granted, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def exhausted(self, key: str) -> float:
        """Without taking a token: 0 if one is available, else the seconds until one is."""
        if self.rate <= 0:
            return 0.0
        tokens, last = self._buckets.get(key, (self.burst, self._clock()))
        tokens = min(self.burst, tokens + (self._clock() - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= 10_000:
            return
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
