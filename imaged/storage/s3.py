"""Images in an S3-compatible bucket (AWS S3, MinIO, Ceph, SeaweedFS, Cloudflare R2, Aliyun OSS), through
aiobotocore: the maintained asynchronous S3 client that speaks the whole protocol imaged needs (multipart uploads,
listing and aborting incomplete ones, presigned URLs) against any endpoint.

An image up to one part (``IMAGED_S3_PART_BYTES``, 8 MiB) is held in memory and stored with one PUT; a larger
one goes up as a multipart upload, a part at a time, so memory stays at one part whatever the image's size. Either
way the object appears under its key only when complete (a multipart upload is invisible until it is completed),
and only after its dimensions were checked. Uploads a crash left incomplete are aborted by :meth:`S3Store.sweep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import DownloadError, StorageError
from ..image_format import check_sides, read_dimensions
from .base import ImageStore, ImageWriter, StoredImage

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

#: S3's smallest part (all but the last part of a multipart upload)
MIN_PART_BYTES = 5 * 1024 * 1024
#: bytes of an image's start kept to read its dimensions (formats other than PNG)
HEAD_KEEP_BYTES = 1024 * 1024
DELETE_BATCH = 1000


class S3Settings(BaseSettings):
    """``IMAGED_S3_*``: where the bucket is and how to reach it."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGED_S3_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    bucket: str = Field("", description="the bucket (required with IMAGED_STORAGE=s3)")
    prefix: str = Field("images/", description="key prefix of every image")
    endpoint_url: str | None = Field(None, description="the S3 endpoint (unset: AWS)")
    region: str | None = Field(
        None, description="the region (some services need one; AWS defaults to its own)"
    )
    access_key_id: str | None = Field(None, description="unset: the usual AWS credential chain")
    secret_access_key: SecretStr | None = None
    public_base_url: str | None = Field(
        None, description="stable public links: <this>/<key> instead of presigning"
    )
    presign_ttl_s: int = Field(3600, ge=1, le=7 * 24 * 3600, description="lifetime of a presigned link")
    force_path_style: bool = Field(False, description="bucket in the path, not the host (MinIO, SeaweedFS)")
    part_bytes: int = Field(
        8 * 1024 * 1024, ge=MIN_PART_BYTES, description="multipart part size (memory per upload)"
    )


def storage_failed(what: str, exc: BaseException) -> DownloadError:
    """A store failure during a download: retried as a download (the provider's URL is still good)."""
    detail = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    return DownloadError(
        f"storing the image failed: {what}: {type(exc).__name__}{f' {detail}' if detail else ''}",
        code="storage_error",
        retryable=True,
    )


class S3Store(ImageStore):
    kind = "s3"

    def __init__(self, settings: S3Settings) -> None:
        if not settings.bucket:
            raise StorageError("IMAGED_STORAGE=s3 needs IMAGED_S3_BUCKET")
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the S3 store is not started")
        return self._client

    async def start(self) -> None:
        if self._client is not None:
            return  # started already (a store may be shared, as in tests)
        s = self.settings
        config = AioConfig(
            s3={"addressing_style": "path" if s.force_path_style else "auto"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=s.endpoint_url,
                region_name=s.region,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
                config=config,
            )
        )

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    def settings_models(self) -> list[BaseModel]:
        return [self.settings]

    def key_of(self, storage_url: str) -> str | None:
        """The key of an ``s3://bucket/key`` URL of this bucket and prefix; None for anything else."""
        head = f"s3://{self.bucket}/"
        if not storage_url.startswith(head):
            return None
        key = storage_url[len(head) :]
        return key if key.startswith(self.prefix) else None

    def writer(self, name: str, content_type: str) -> ImageWriter:
        return S3Writer(self, self.prefix + name, content_type)

    async def link(self, storage_url: str) -> str | None:
        key = self.key_of(storage_url)
        if key is None:
            return None
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url.rstrip('/')}/{key}"
        url: str = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.settings.presign_ttl_s
        )
        return url

    async def read(self, storage_url: str, max_bytes: int) -> bytes:
        key = self.key_of(storage_url)
        if key is None:
            raise StorageError("not an image of this store")
        try:
            reply = await self.client.get_object(Bucket=self.bucket, Key=key)
            if reply["ContentLength"] > max_bytes:
                raise StorageError(f"image is larger than {max_bytes} bytes")
            async with reply["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageError(f"the image could not be read ({code})") from None
        return data

    async def delete(self, storage_urls: Sequence[str]) -> int:
        keys = [key for url in storage_urls if (key := self.key_of(url)) is not None]
        removed = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            answer = await self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
            removed += len(batch) - len(answer.get("Errors", []))
        return removed

    async def sweep(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than_s`` ago (a crashed writer's:
        a live one finishes within its download timeout)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                if initiated is not None and initiated > cutoff:
                    continue
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted

    async def incomplete_uploads(self) -> list[str]:
        """Keys of the multipart uploads under the prefix not yet completed or aborted (for checks and tests)."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys += [upload["Key"] for upload in page.get("Uploads", [])]
        return keys

    async def check(self) -> str:
        """The bucket exists and imaged may write, read and delete under its prefix."""
        probe = f"{self.prefix}.imaged-check-{secrets.token_hex(6)}"
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            await self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"imaged check")
            reply = await self.client.get_object(Bucket=self.bucket, Key=probe)
            async with reply["Body"] as body:
                await body.read()
            await self.client.delete_object(Bucket=self.bucket, Key=probe)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageError(f"{self.describe()}: {code} ({exc.operation_name})") from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise StorageError(f"{self.describe()}: {type(exc).__name__}") from None
        return f"{self.describe()}: write, read and delete ok"

    def describe(self) -> str:
        where = self.settings.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


class S3Writer(ImageWriter):
    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        #: what is not uploaded yet: chunks, joined only when a part goes (one copy, then the chunks are gone)
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.head = bytearray()
        self.upload_id: str | None = None
        self.parts: list[CompletedPartTypeDef] = []

    async def write(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_KEEP_BYTES:
            self.head += chunk[: HEAD_KEEP_BYTES - len(self.head)]
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= self.store.settings.part_bytes:
            await self._send_part()

    def _take(self) -> bytes:
        """The buffered bytes as one body; the buffer is empty after."""
        body = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        return body

    async def _send_part(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        try:
            if self.upload_id is None:
                started = await client.create_multipart_upload(
                    Bucket=bucket, Key=self.key, ContentType=self.content_type
                )
                self.upload_id = started["UploadId"]
            number = len(self.parts) + 1
            sent = await client.upload_part(
                Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=self._take()
            )
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            raise storage_failed("uploading a part", exc) from exc
        self.parts.append({"ETag": sent["ETag"], "PartNumber": number})

    async def commit(self, side_max: int, size: tuple[int, int] | None) -> StoredImage:
        if size is None:
            size = await asyncio.to_thread(read_dimensions, bytes(self.head))
        width, height = size
        check_sides(width, height, side_max)
        client, bucket = self.store.client, self.store.bucket
        try:
            if self.upload_id is None:
                await client.put_object(
                    Bucket=bucket, Key=self.key, Body=self._take(), ContentType=self.content_type
                )
            else:
                if self.chunks:
                    await self._send_part()
                await client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
                self.upload_id = None
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            raise storage_failed("completing the upload", exc) from exc
        return StoredImage(f"s3://{bucket}/{self.key}", None, width, height)

    async def abort(self) -> None:
        self.chunks.clear()
        self.buffered = 0
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        try:
            await self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
            )
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            log.warning("could not abort an upload (the janitor will): %s", type(exc).__name__)
