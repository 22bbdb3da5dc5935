"""R1 with the images in an S3-compatible bucket (the local server): kill -9 during a run, then count.

Besides R1's counts (nothing lost, no terminal event twice, at most one extra submission per kill): after the
janitor's pass no multipart upload is left incomplete, and every object under the run's prefix is an image a
stored task names (a killed upload that restarts writes under the same key, never a second name).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from imaged.simulator import SimulatorConfig
from imaged.storage.s3 import S3Store

from ..conftest import s3_settings
from ..support import (
    MONGODB_URL,
    S3_ACCESS_KEY_ID,
    S3_BUCKET,
    S3_ENDPOINT_URL,
    S3_SECRET_ACCESS_KEY,
    seed_body,
)
from .harness import FAST, Reliability, publish_tasks

pytestmark = pytest.mark.timeout(900)

# 1440*1440 incompressible pixels are about 6 MB: above the 5 MiB part, so those images go up in parts and a
# kill can land between parts; LiblibAI's 768x1024 ones go up in one request.
PART_BYTES = 5 * 1024 * 1024


def bodies(n: int) -> list[tuple[str, bytes]]:
    large = json.loads(seed_body("wanx2.1-t2i-turbo"))
    large["parameters"]["size"] = "1440*1440"
    small = seed_body("star-3-alpha-t2i")
    return [
        (f"s{i:04d}-{secrets.token_hex(4)}", json.dumps(large).encode() if i % 2 == 0 else small)
        for i in range(n)
    ]


async def stored_images(namespace: str, task_ids: list[str]) -> set[str]:
    """The storage URLs of every image the tasks' results name."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, serverSelectionTimeoutMS=10000)
    try:
        docs = client[namespace]["tasks"].find({"_id": {"$in": task_ids}}, {"result": 1})
        return {
            image["storage_url"]
            async for doc in docs
            for image in ((doc.get("result") or {}).get("images") or [])
        }
    finally:
        await client.close()


async def test_r1_kill9_with_images_in_s3(reliability: Reliability, namespace: str) -> None:
    run = reliability
    prefix = f"{namespace}/images/"
    config_env = {
        "IMAGED_STORAGE": "s3",
        "IMAGED_S3_BUCKET": S3_BUCKET,
        "IMAGED_S3_PREFIX": prefix,
        "IMAGED_S3_ENDPOINT_URL": S3_ENDPOINT_URL,
        "IMAGED_S3_REGION": "us-east-1",
        "IMAGED_S3_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
        "IMAGED_S3_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
        "IMAGED_S3_FORCE_PATH_STYLE": "true",
        "IMAGED_S3_PART_BYTES": str(PART_BYTES),
    }
    n, planned_kills = run.size(24, 120), run.size(3, 12)
    config = SimulatorConfig.without_limits(task_seconds=1.0, image_fill="noise")
    cluster = await run.make_cluster(config, **{**FAST, **config_env})
    daemon = await cluster.spawn()
    ids = await publish_tasks(run.bus, bodies(n))
    kills = await run.kill_during_run(cluster, daemon, ids, planned_kills)
    await run.wait_all(cluster, ids, within=run.size(180, 600))
    assert await daemon.terminate() == 0

    store = S3Store(s3_settings(prefix))
    await store.start()
    try:
        # The janitor's pass (a daemon runs it at start and hourly, for uploads older than an hour).
        aborted = await store.sweep(0)
        incomplete = await store.incomplete_uploads()
        objects = {f"s3://{S3_BUCKET}/{key}" for key in await list_keys(store, prefix)}
    finally:
        await store.close()
    named = await stored_images(cluster.namespace, ids)
    result = await run.tally(
        "R1-S3", cluster, ids, kills=kills, aborted_uploads=aborted, objects=len(objects)
    )
    assert result.tasks <= result.submissions <= result.tasks + kills
    assert run.statuses(ids) == {"completed"}
    assert incomplete == []
    assert len(named) == n and objects == named, (sorted(objects - named), sorted(named - objects))


async def list_keys(store: S3Store, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = store.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=store.bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys
