"""Links to images that anyone holding the link may fetch, for a while, without credentials.

An image in a bucket has one already (presigned, or public: the store's ``link``). An image in the local
directory is served by this API at ``/v1/files/<name>``, behind a signature of its name and expiry (HMAC-SHA256
with the key the replicas share), so that a browser or the OpenAI SDK's caller can download it directly.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from ..storage import ImageStore, LocalStore
from .context import deps
from .http import ApiError

FILE_ROUTE = "/v1/files/{name}"
_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}


def _signature(key: bytes, name: str, expires: int) -> str:
    message = f"file-link\0{name}\0{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def base_url(request: web.Request, public_url: str | None) -> str:
    """Where clients reach this API: the configured public address, else the one this request came in on."""
    return (public_url or str(request.url.origin())).rstrip("/")


async def image_link(
    request: web.Request, store: ImageStore, storage_url: str, *, key: bytes | None, ttl_s: int
) -> str | None:
    """A link that downloads the image with plain HTTP: the store's own, or a signed link to this API."""
    link = await store.link(storage_url)
    if link is not None or not isinstance(store, LocalStore) or key is None:
        return link
    path = store.path_of(storage_url)
    if path is None:
        return None
    expires = int(time.time()) + ttl_s
    base = base_url(request, deps(request).settings.public_url)
    return f"{base}/v1/files/{quote(path.name)}?expires={expires}&sig={_signature(key, path.name, expires)}"


async def serve_file(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{name}?expires&sig``: a local image, for whoever holds a valid link."""
    d = deps(request)
    name = request.match_info["name"]
    store, key = d.images, d.link_key
    try:
        expires = int(request.query.get("expires", ""))
    except ValueError:
        expires = 0
    signature = request.query.get("sig", "")
    valid = (
        isinstance(store, LocalStore)
        and key is not None
        and expires >= time.time()
        and hmac.compare_digest(signature, _signature(key, name, expires))
        and Path(name).name == name
        and not name.startswith(".")
    )
    if not valid:
        raise ApiError(404, "no such file, or the link has expired")
    assert isinstance(store, LocalStore)
    path = store.image_dir / name
    if not path.is_file():
        raise ApiError(404, "no such file, or the link has expired")
    content_type = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, max-age=300"}
    )
