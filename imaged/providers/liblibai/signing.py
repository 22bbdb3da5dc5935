"""LiblibAI request signing: HMAC-SHA1 of ``path&timestamp&nonce``, URL-safe base64 without padding."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

NONCE_BYTES = 16  # 32 hex characters


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
