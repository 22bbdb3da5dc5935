"""Standard Webhooks signatures (https://www.standardwebhooks.com), written here rather than taken from a library,
so that the tests can verify every delivery with the reference implementation as an independent check.

A delivery carries ``webhook-id`` (the event id: the same on every attempt, so receivers can drop duplicates),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``: ``v1,`` + base64 of
HMAC-SHA256(key, ``"<id>.<timestamp>.<body>"``), the key being the base64 part of the ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

SECRET_PREFIX = "whsec_"
#: key sizes accepted: below 24 bytes a key is too weak; the specification allows up to 64
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
_SECRET_HELP = (
    f"IMAGED_WEBHOOK_SECRET must be '{SECRET_PREFIX}' followed by the base64 of "
    f"{MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes (e.g. whsec_$(openssl rand -base64 32))"
)


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ValueError (never quoting the secret) if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(_SECRET_HELP)
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_SECRET_HELP) from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"{_SECRET_HELP}; it decodes to {len(key)} bytes")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one attempt."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(key: bytes, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers of an attempt made now (a fresh timestamp on every attempt)."""
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }
