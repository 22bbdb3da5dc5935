"""Provider clients: the interface, the registry, and the built-in DashScope and LiblibAI clients."""

from .base import Credential, PollResult, Provider, ProviderImage, ProviderState
from .registry import ENTRY_POINT_GROUP, available_providers

__all__ = [
    "ENTRY_POINT_GROUP",
    "Credential",
    "PollResult",
    "Provider",
    "ProviderImage",
    "ProviderState",
    "available_providers",
]
