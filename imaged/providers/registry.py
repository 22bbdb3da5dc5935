"""Provider registry: built-in providers plus plugins from the entry-point group ``imaged.providers``."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Provider

ENTRY_POINT_GROUP = "imaged.providers"

log = logging.getLogger(__name__)


def builtin_providers() -> dict[str, type[Provider]]:
    from .aliyun import AliyunProvider
    from .liblibai import LiblibProvider

    return {AliyunProvider.name: AliyunProvider, LiblibProvider.name: LiblibProvider}


def available_providers() -> dict[str, type[Provider]]:
    """Every provider class by name: built-ins first, then plugins (a plugin may not shadow a built-in)."""
    providers = builtin_providers()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in providers:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the daemon
            log.error("provider plugin %s could not be loaded: %s", ep.name, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise ConfigError(f"entry point {ep.name!r} in {ENTRY_POINT_GROUP} is not a Provider subclass")
        providers[ep.name] = cls
    return providers
