"""The references each figure is compared with, measured in the same run on the same services.

- Broker round trip: the same number of messages of the same size, published with confirms, consumed and acked
  with aio-pika: the most a design that moves each task through RabbitMQ once could do.
- Database floor: one insert and two updates per task, by ``_id``, from as many concurrent workers as imaged
  runs tasks at once: the least any design that stores each task's state must do.
- Download: the same file fetched with a bare aiohttp GET, written to disk in chunks.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import aiohttp
from pymongo import AsyncMongoClient

from ..contract import utcnow

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from ..storage.s3 import S3Store

FLOOR_WORKERS = 16


async def broker_round_trip(amqp_url: str, body: bytes, count: int, prefix: str) -> float:
    """Messages per second through publish (confirmed), consume and ack."""
    queue_name = f"{prefix}.bench-reference"
    connection = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=256)
        consumed = await consumer_channel.get_queue(queue_name)
        done = asyncio.Event()
        seen = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen >= count:
                done.set()

        tag = await consumed.consume(on_message)
        started = time.perf_counter()
        publishes = [
            channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(i)),
                routing_key=queue_name,
            )
            for i in range(count)
        ]
        for chunk in range(0, count, 500):
            await asyncio.gather(*publishes[chunk : chunk + 500])
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        await consumed.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return count / elapsed
    finally:
        await connection.close()


def task_document(task_id: str, *, finished: bool = False) -> dict[str, Any]:
    """A document shaped and sized like one of imaged's tasks."""
    now = utcnow()
    doc: dict[str, Any] = {
        "_id": task_id,
        "status": "completed" if finished else "pending",
        "model": "star-3-alpha-t2i",
        "provider": "liblibai",
        "parameters": {"generateParams": {"prompt": "a lotus leaf, " * 4, "imgCount": 1, "steps": 30}},
        "request_parameters": {"prompt": "a lotus leaf, " * 4, "imgCount": 1, "steps": 30},
        "owner": None,
        "correlation_id": None,
        "reply_to": None,
        "metadata": {"bench": True},
        "provider_task_id": None,
        "credential": None,
        "attempts": 0,
        "seq": 1,
        "created_at": now,
        "updated_at": now,
        "submitted_at": None,
        "finished_at": None,
        "deadline": now,
        "progress": 0.0,
        "result": None,
        "error": None,
        "history": [{"status": "pending", "at": now}],
    }
    if finished:
        doc.update(
            provider_task_id=secrets.token_hex(16),
            finished_at=now,
            progress=1.0,
            result={
                "id": secrets.token_hex(16),
                "model": "star-3-alpha-t2i",
                "images": [
                    {
                        "index": 0,
                        "url": "https://liblibai-online.liblib.cloud/sd-images/" + secrets.token_hex(32),
                        "local_path": "/data/images/liblibai_20260101_000000_0_0000abcd.png",
                        "sha256": secrets.token_hex(32),
                        "bytes": 812345,
                        "width": 512,
                        "height": 512,
                        "content_type": "image/png",
                    }
                ],
            },
            terminal_event={"event_id": f"{task_id}:3", "type": "task.completed", "seq": 3},
        )
    return doc


async def database_floor(mongodb_url: str, db_name: str, count: int) -> float:
    """Tasks per second doing one insert and two updates each, from ``FLOOR_WORKERS`` workers."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url, retryWrites=False)
    try:
        collection = client[db_name]["bench_floor"]
        await collection.drop()
        await collection.insert_one({"_id": "warm-up"})
        ids = iter(range(count))

        async def worker() -> None:
            for n in ids:
                task_id = f"floor-{n:07d}"
                await collection.insert_one(task_document(task_id))
                await collection.update_one(
                    {"_id": task_id}, {"$set": {"status": "processing", "provider_task_id": "x" * 32}}
                )
                await collection.update_one(
                    {"_id": task_id}, {"$set": {"status": "completed", "finished_at": utcnow()}}
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(FLOOR_WORKERS)))
        elapsed = time.perf_counter() - started
        await collection.drop()
        return count / elapsed
    finally:
        await client.close()


async def raw_download(url: str, target: Path, chunk_bytes: int, *, keep: bool = False) -> tuple[float, int]:
    """(seconds, bytes) to fetch ``url`` with a bare aiohttp GET into ``target`` (removed unless ``keep``)."""
    started = time.perf_counter()
    size = 0
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        resp.raise_for_status()
        out = await asyncio.to_thread(target.open, "wb")
        try:
            async for chunk in resp.content.iter_chunked(chunk_bytes):
                size += len(chunk)
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
    elapsed = time.perf_counter() - started
    if not keep:
        await asyncio.to_thread(target.unlink, missing_ok=True)
    return elapsed, size


async def raw_upload(store: S3Store, source: Path, name: str) -> float:
    """Seconds to upload a file to the store's bucket with its client: a multipart upload of the store's part
    size, parts read from disk one at a time (what imaged's writer does, minus the download)."""
    client, key, part_bytes = store.client, store.prefix + name, store.settings.part_bytes
    started = time.perf_counter()
    upload = await client.create_multipart_upload(Bucket=store.bucket, Key=key, ContentType="image/png")
    parts: list[CompletedPartTypeDef] = []
    file = await asyncio.to_thread(source.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, part_bytes):
            number = len(parts) + 1
            sent = await client.upload_part(
                Bucket=store.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=chunk
            )
            parts.append({"ETag": sent["ETag"], "PartNumber": number})
    finally:
        await asyncio.to_thread(file.close)
    await client.complete_multipart_upload(
        Bucket=store.bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return time.perf_counter() - started
