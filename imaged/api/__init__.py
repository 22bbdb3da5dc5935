"""The HTTP API: the original service's task endpoints, plus list, cancel, models, health, metrics and the
OpenAPI document. It depends on :class:`ApiDeps` only, never on the daemon."""

from .app import ROUTES, create_app
from .context import ApiDeps
from .http import error_middleware

__all__ = ["ROUTES", "ApiDeps", "create_app", "error_middleware"]
