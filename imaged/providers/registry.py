"""Provider registry: built-in providers plus plugins from the entry-point group ``imaged.providers``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Provider, ProviderSettings, provider_config

if TYPE_CHECKING:
    import aiohttp

    from ..catalog import Catalog

ENTRY_POINT_GROUP = "imaged.providers"

log = logging.getLogger(__name__)


def builtin_providers() -> dict[str, type[Provider]]:
    from .aliyun import AliyunProvider
    from .liblibai import LiblibProvider

    return {AliyunProvider.name: AliyunProvider, LiblibProvider.name: LiblibProvider}


def settings_model_of(cls: type[Provider]) -> type[ProviderSettings]:
    """The provider's settings model; a plugin that declares none gets the common one with its own prefix."""
    if cls.settings_model is not ProviderSettings:
        return cls.settings_model
    return type(
        f"{cls.__name__}Settings",
        (ProviderSettings,),
        {"model_config": provider_config(f"IMAGED_{cls.name.upper()}_"), "__module__": cls.__module__},
    )


async def providers_with_credentials(settings: Mapping[str, ProviderSettings]) -> set[str]:
    """The providers whose settings name at least one credential."""
    import aiohttp  # a provider is built with a session; none is used here

    classes = available_providers()
    async with aiohttp.ClientSession() as session:
        return {name for name, values in settings.items() if classes[name](values, session).credentials()}


def load_provider_settings(
    overrides: Mapping[str, ProviderSettings] | None = None,
) -> dict[str, ProviderSettings]:
    """Every installed provider's settings: from ``overrides`` where given, else read from the environment.
    Raises ConfigError naming the provider and the variable that is wrong."""
    return {
        name: overrides[name] if overrides is not None and name in overrides else cls.load_settings()
        for name, cls in available_providers().items()
    }


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
        cls.settings_model = settings_model_of(cls)
        providers[ep.name] = cls
    return providers


def build_providers(
    catalog: Catalog, settings: Mapping[str, ProviderSettings], session: aiohttp.ClientSession
) -> dict[str, Provider]:
    """The providers the catalog names that have credentials, each model checked by its provider.

    ConfigError if the catalog names a provider that is not installed, or if no provider has credentials.
    """
    classes = available_providers()
    providers: dict[str, Provider] = {}
    for name in catalog.providers():
        cls = classes.get(name)
        if cls is None:
            raise ConfigError(f"the catalog names provider {name!r}, but no such provider is installed")
        for spec in catalog.models.values():
            if spec.provider == name:
                cls.check_model(spec)
        provider = cls(settings[name], session)
        if not provider.credentials():
            log.warning("provider %s has no credentials configured: its models are unavailable", name)
            continue
        providers[name] = provider
    if not providers:
        raise ConfigError(
            "no provider has credentials: set IMAGED_ALIYUN_API_KEY and/or IMAGED_LIBLIBAI_ACCESS_KEY + "
            "IMAGED_LIBLIBAI_SECRET_KEY (or a plugin's), or run with --simulate"
        )
    return providers
