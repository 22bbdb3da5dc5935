"""imaged: an image-generation daemon.

Requests arrive on RabbitMQ, provider tasks are driven to completion, images land on disk, state lives in MongoDB,
and completion events go out on a topic exchange.

What a provider plugin needs is re-exported here (see README, "Provider plugins"): the :class:`Provider`
interface and its :class:`ProviderSettings`, the values a provider returns, the errors it raises, the catalog's
:class:`ModelSpec`, and the helpers for HTTP calls and parameter checks.
"""

__version__ = "0.1.0"

from .catalog import ModelSpec  # after __version__, which submodules read
from .contract import ErrorCategory, ErrorInfo
from .errors import ConfigError, InvalidRequest, ProviderError, TaskError
from .providers.base import (
    Credential,
    HttpReply,
    PollResult,
    Provider,
    ProviderImage,
    ProviderSettings,
    ProviderState,
    provider_config,
    request_json,
)
from .providers.params import validate_model

__all__ = [
    "ConfigError",
    "Credential",
    "ErrorCategory",
    "ErrorInfo",
    "HttpReply",
    "InvalidRequest",
    "ModelSpec",
    "PollResult",
    "Provider",
    "ProviderError",
    "ProviderImage",
    "ProviderSettings",
    "ProviderState",
    "TaskError",
    "__version__",
    "provider_config",
    "request_json",
    "validate_model",
]
