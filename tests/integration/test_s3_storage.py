"""Images in an S3-compatible bucket (the local SeaweedFS of `make services`), through the real daemon."""

from __future__ import annotations

import hashlib
import io
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from imaged.contract import Result
from imaged.daemon import Daemon
from imaged.errors import DownloadError, StorageError
from imaged.images import ImageDownloader
from imaged.netguard import AddressPolicy, guarded_connector
from imaged.simulator import Simulator
from imaged.storage.s3 import S3Settings, S3Store

from ..conftest import make_daemon, make_settings, s3_settings
from ..support import IMAGE_NAME_RE, SEED_MODELS, Bus, seed_body

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024


async def object_bytes(store: S3Store, key: str) -> bytes:
    reply = await store.client.get_object(Bucket=store.bucket, Key=key)
    async with reply["Body"] as body:
        data: bytes = await body.read()
    return data


async def object_exists(store: S3Store, key: str) -> bool:
    listed = await store.client.list_objects_v2(Bucket=store.bucket, Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", []))


@pytest.fixture
async def s3_daemon(
    namespace: str, tmp_path: Path, simulator: Simulator, bus: Bus, s3_store: S3Store
) -> AsyncIterator[Daemon]:
    settings = make_settings(namespace, tmp_path / "images", simulator, storage="s3")
    daemon = make_daemon(settings, simulator, image_store=s3_store)
    await daemon.start()
    yield daemon
    await daemon.stop()


async def test_original_requests_complete_into_the_bucket(
    s3_daemon: Daemon, bus: Bus, s3_store: S3Store, namespace: str, tmp_path: Path
) -> None:
    task_ids = {model: secrets.token_hex(12) for model in SEED_MODELS}
    for model, task_id in task_ids.items():
        await bus.publish(seed_body(model), message_id=task_id)
    terminal = await bus.wait_terminal(task_ids.values(), within=60)
    assert s3_daemon.http_url is not None
    async with aiohttp.ClientSession() as http:
        for model, task_id in task_ids.items():
            event = terminal[task_id]
            assert event["type"] == "task.completed", (model, event.get("error"))
            result = Result.model_validate(event["result"])
            for image in result.images:
                assert image.local_path is None
                assert image.storage_url is not None and image.download_url is not None
                match = re.fullmatch(rf"s3://{s3_store.bucket}/({namespace}/images/(.+))", image.storage_url)
                assert match, image.storage_url
                key, name = match.groups()
                assert re.fullmatch(IMAGE_NAME_RE, name), name
                stored = await object_bytes(s3_store, key)
                assert (len(stored), hashlib.sha256(stored).hexdigest()) == (image.bytes, image.sha256)
                async with http.get(image.download_url) as resp:  # plain HTTP, no credentials
                    assert resp.status == 200
                    assert await resp.read() == stored
            # A result read over HTTP carries a link made for that read.
            async with http.get(f"{s3_daemon.http_url}/api/v1/tasks/{task_id}/result") as resp:
                body = await resp.json()
            fresh = body["results"]["result"]["images"][0]["download_url"]
            async with http.get(fresh) as resp:
                assert (
                    resp.status == 200
                    and hashlib.sha256(await resp.read()).hexdigest() == result.images[0].sha256
                )
    assert not (tmp_path / "images").exists()  # nothing on local disk


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    image = Image.frombytes("RGB", (side, side), secrets.token_bytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


async def test_a_large_image_goes_up_in_parts_and_shows_only_when_complete(namespace: str) -> None:
    store = S3Store(s3_settings(f"{namespace}/images/", part_bytes=5 * MB))
    await store.start()
    try:
        data = noise_png(1600)  # about 7.7 MB: two parts
        writer = store.writer("aliyun_20260101_000000_0_0badc0de.png", "image/png")
        key = f"{namespace}/images/aliyun_20260101_000000_0_0badc0de.png"
        for start in range(0, len(data), 256 * 1024):
            await writer.write(data[start : start + 256 * 1024])
        assert await store.incomplete_uploads() == [key]  # the first part went up...
        assert not await object_exists(store, key)  # ...and nothing is visible under the key
        stored = await writer.commit(side_max=4096, size=None)
        assert (stored.width, stored.height) == (1600, 1600) and stored.local_path is None
        assert await object_bytes(store, key) == data
        assert await store.incomplete_uploads() == []
    finally:
        await store.sweep(0)
        await store.delete([f"s3://{store.bucket}/{namespace}/images/aliyun_20260101_000000_0_0badc0de.png"])
        await store.close()


async def test_a_crashed_upload_is_aborted_by_the_sweep_and_an_oversize_image_never_shows(
    namespace: str,
) -> None:
    store = S3Store(s3_settings(f"{namespace}/images/", part_bytes=5 * MB))
    await store.start()
    try:
        data = noise_png(1600)
        crashed = store.writer("crashed.png", "image/png")
        for start in range(0, 6 * MB, MB):
            await crashed.write(data[start : start + MB])
        assert len(await store.incomplete_uploads()) == 1  # the writer "crashed": never committed nor aborted
        assert await store.sweep(3600) == 0  # a young upload may be another replica's
        assert await store.sweep(0) == 1
        assert await store.incomplete_uploads() == []

        too_large = store.writer("too-large.png", "image/png")
        for start in range(0, len(data), MB):
            await too_large.write(data[start : start + MB])
        with pytest.raises(DownloadError, match="larger than 1024 pixels a side"):
            await too_large.commit(side_max=1024, size=None)
        await too_large.abort()
        assert await store.incomplete_uploads() == []
        assert not await object_exists(store, f"{namespace}/images/too-large.png")
    finally:
        await store.close()


async def test_a_download_streams_into_the_bucket(simulator: Simulator, namespace: str) -> None:
    store = S3Store(s3_settings(f"{namespace}/images/", part_bytes=5 * MB))
    await store.start()
    policy = AddressPolicy(["127.0.0.0/8"])  # the emulator, on loopback
    try:
        async with aiohttp.ClientSession(connector=guarded_connector(policy)) as http:
            downloader = ImageDownloader(http, store, max_bytes=64 * MB, timeout_s=60, policy=policy)
            url = f"{simulator.url}/_sim/images/liblibai_big_0_1700x1700_noise.png"
            saved = await downloader.download(
                url, lambda ext: f"liblibai_big_0_00000000.{ext}", side_max=4096
            )
        stored = await object_bytes(store, f"{namespace}/images/liblibai_big_0_00000000.png")
        assert saved.bytes == len(stored) > 5 * MB  # more than one part
        assert saved.sha256 == hashlib.sha256(stored).hexdigest()
        assert saved.storage_url == f"s3://{store.bucket}/{namespace}/images/liblibai_big_0_00000000.png"
        with Image.open(io.BytesIO(stored)) as image:
            assert image.size == (saved.width, saved.height) == (1700, 1700)
    finally:
        await store.delete([f"s3://{store.bucket}/{namespace}/images/liblibai_big_0_00000000.png"])
        await store.close()


async def test_retention_deletes_the_objects_of_purged_tasks_when_asked(
    s3_daemon: Daemon, bus: Bus, s3_store: S3Store, namespace: str
) -> None:
    kept, purged = secrets.token_hex(12), secrets.token_hex(12)
    for task_id in (kept, purged):
        await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=task_id)
    events = await bus.wait_terminal([kept, purged], within=60)
    keys = {
        task_id: events[task_id]["result"]["images"][0]["storage_url"].split("/", 3)[3]
        for task_id in (kept, purged)
    }
    store = s3_daemon.store
    await store.save(purged, {"finished_at": datetime(2000, 1, 1, tzinfo=UTC)})  # long ago
    assert (
        await store.purge_finished(before=datetime(2001, 1, 1, tzinfo=UTC), delete_images=s3_store.delete)
        == 1
    )
    assert not await object_exists(s3_store, keys[purged])
    assert await object_exists(s3_store, keys[kept])
    assert await store.get(purged) is None and await store.get(kept) is not None


def test_s3_storage_needs_a_bucket() -> None:
    with pytest.raises(StorageError, match="IMAGED_S3_BUCKET"):
        S3Store(S3Settings(bucket=""))
