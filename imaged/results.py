"""What a finished provider task leaves behind: its images fetched and checked, and the task's result.

Images are fetched as downloads, retried as downloads (never by generating again); a task keeps no more images
than it asked for, and pays for no more (``cost``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from . import retry
from .catalog import ModelSpec, parse_size
from .contract import ImageInfo, Result
from .errors import DownloadError
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
    when = datetime.now()  # local time, as the original service named its files
    images: list[ImageInfo] = []
    failed = list(poll.failed_images)
    wanted = provider.images_requested(spec, task.parameters)
    if len(poll.images) > wanted:
        log.warning(
            "the provider listed %d images for %d requested: keeping %d", len(poll.images), wanted, wanted
        )
    side_max = provider.image_side_max(spec, task.parameters)
    for image in poll.images[:wanted]:
        try:
            saved = await download(downloader, image.url, provider.name, image.index, when, side_max)
        except DownloadError as exc:
            failed.append({"index": image.index, "code": exc.code, "message": exc.message})
            continue
        metrics.download_bytes.labels(provider.name).inc(saved.bytes)
        images.append(
            ImageInfo(
                index=image.index,
                url=output.image_url(image.url),
                local_path=str(saved.path),
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
    downloader: ImageDownloader, url: str, provider: str, index: int, when: datetime, side_max: int
) -> SavedImage:
    """One image, retried while its download fails in a way worth retrying (``retry.DOWNLOAD``)."""
    policy = retry.DOWNLOAD
    attempt = 0
    while True:
        try:
            return await downloader.download(url, provider, index, when, side_max=side_max)
        except DownloadError as exc:
            attempt += 1
            if not exc.retryable or policy.exhausted(attempt):
                raise
            wait = await policy.wait(attempt)
            log.info("retried image download after %.1fs: %s", wait, exc.message)
