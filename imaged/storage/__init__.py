"""Where images are kept: ``local`` files (the default) or an ``s3`` bucket (``IMAGED_STORAGE``).

``base`` is the interface, ``local`` and ``s3`` the two stores; :func:`open_image_store` picks one from the
settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ImageStore, ImageWriter, StoredImage
from .local import LocalStore

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["ImageStore", "ImageWriter", "LocalStore", "StoredImage", "open_image_store"]


def open_image_store(settings: Settings) -> ImageStore:
    """The store the settings name (not started yet); StorageError when its settings are incomplete."""
    if settings.storage == "s3":
        from .s3 import S3Settings, S3Store  # botocore loads only where S3 is used

        return S3Store(S3Settings())
    return LocalStore(settings.image_dir)
