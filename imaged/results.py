"""What a finished provider task leaves behind: its images fetched and checked, and the task's result.

Images are fetched as downloads, retried as downloads (never by generating again); a task keeps no more images
than it asked for, and pays for no more (``cost``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from . import retry
from .catalog import ModelSpec, parse_size
from .contract import ImageInfo, Result
from .errors import DownloadError
from .image_format import image_name, image_token
from .images import ImageDownloader, SavedImage
from .metrics import Metrics
from .provider_output import ProviderOutput
from .providers.base import PollResult, Provider
from .task import Task

log = logging.getLogger(__name__)


async def collect(
    provider: Provider,
    spec: ModelSpec,
    task: Task,
    poll: PollResult,
    downloader: ImageDownloader,
    metrics: Metrics,
    output: ProviderOutput,
) -> Result:
    """Download the images of a succeeded task and build its result; DownloadError if none could be had."""
    when = datetime.now()  # local time of completion, as the original service recorded it
    # Names come from the task (its submit time, local as the original service's; a token of task and index),
    # so that every run of the task writes its images under the same names.
    named = (task.submitted_at or task.created_at).astimezone()
    images: list[ImageInfo] = []
    failed = list(poll.failed_images)
    wanted = provider.images_requested(spec, task.parameters)
    if len(poll.images) > wanted:
        log.warning(
            "the provider listed %d images for %d requested: keeping %d", len(poll.images), wanted, wanted
        )
    side_max = provider.image_side_max(spec, task.parameters)
    for image in poll.images[:wanted]:
        token = image_token(task.id, image.index)

        def name_of(ext: str, index: int = image.index, token: str = token) -> str:
            return image_name(provider.name, named, index, ext, token)

        try:
            saved = await download(downloader, image.url, name_of, side_max)
        except DownloadError as exc:
            failed.append({"index": image.index, "code": exc.code, "message": exc.message})
            continue
        metrics.download_bytes.labels(provider.name).inc(saved.bytes)
        images.append(
            ImageInfo(
                index=image.index,
                url=output.image_url(image.url),
                local_path=saved.local_path,
                storage_url=saved.storage_url,
                download_url=await downloader.store.link(saved.storage_url),
                seed=image.seed,
                auditStatus=image.audit_status,
                sha256=saved.sha256,
                bytes=saved.bytes,
                width=saved.width,
                height=saved.height,
                content_type=saved.content_type,
            )
        )
    if not images:
        reason = failed[0]["message"] if failed else "the provider delivered no image"
        raise DownloadError(f"no image could be downloaded: {reason}", code="no_images")
    described = provider.describe(spec, task.parameters)
    info = dict(poll.info)
    usage = info.pop("usage", None) or {"image_count": len(images)}
    width, height = described.get("width", images[0].width), described.get("height", images[0].height)
    billed_size = parse_size(usage["size"]) if isinstance(usage.get("size"), str) else (width, height)
    points = info.get("pointsCost")
    cost = spec.price.cost(len(images), billed_size, points if isinstance(points, int | float) else None)
    return Result(
        id=task.provider_task_id or "",
        model=task.model,
        created=f"{when:%Y-%m-%d %H:%M:%S}",
        images=images,
        prompt=described.get("prompt"),
        width=width,
        height=height,
        usage=usage,
        failed_images=failed,
        cost=cost,
        **info,
    )


async def download(
    downloader: ImageDownloader, url: str, name_of: Callable[[str], str], side_max: int
) -> SavedImage:
    """One image, retried while its download fails in a way worth retrying (``retry.DOWNLOAD``)."""
    policy = retry.DOWNLOAD
    attempt = 0
    while True:
        try:
            return await downloader.download(url, name_of, side_max=side_max)
        except DownloadError as exc:
            attempt += 1
            if not exc.retryable or policy.exhausted(attempt):
                raise
            wait = await policy.wait(attempt)
            log.info("retried image download after %.1fs: %s", wait, exc.message)
