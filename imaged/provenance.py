"""Proof that a lane message was written by imaged, so that a dead letter can be believed.

Any AMQP client allowed to publish on the vhost can put a message with an ``x-death`` header into the dead-letter
path. A lane message that the broker dead-lettered (delivery limit reached) fails its task; a forged one must not.
Intake therefore signs every lane message it writes (HMAC-SHA256 over the body, header ``x-imaged-signature``);
the broker keeps headers when it dead-letters a message, and the dead-letter watcher believes a lane dead letter
only with a valid signature. The key is shared by the replicas through the database (publishers need no access
to it): the first replica to start creates it, by insert, and every other reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

SIGNATURE_HEADER = "x-imaged-signature"
_KEY_ID = "lane-signing-key"


class LaneSigner:
    """Signs and checks lane message bodies with the replicas' shared key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    async def load(cls, collection: AsyncCollection[dict[str, Any]]) -> LaneSigner:
        """The shared key from the ``internal`` collection, created by the first replica that needs it."""
        doc = await collection.find_one({"_id": _KEY_ID})
        if doc is None:
            with contextlib.suppress(DuplicateKeyError):  # another replica was first
                await collection.insert_one({"_id": _KEY_ID, "key": secrets.token_hex(32)})
            doc = await collection.find_one({"_id": _KEY_ID})
        if doc is None or not isinstance(doc.get("key"), str):
            raise RuntimeError("the lane signing key could not be read back")
        return cls(bytes.fromhex(doc["key"]))

    def derived_key(self, purpose: bytes) -> bytes:
        """A key of its own for another use of the shared secret (signed file links, say)."""
        return hmac.new(self._key, b"imaged-key\0" + purpose, hashlib.sha256).digest()

    def sign(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def verify(self, body: bytes, signature: Any) -> bool:
        if isinstance(signature, bytes):
            signature = signature.decode("ascii", "replace")
        return isinstance(signature, str) and hmac.compare_digest(self.sign(body), signature)
