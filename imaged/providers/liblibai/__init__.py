"""LiblibAI open API: Star-3 Alpha text-to-image and image-to-image, and custom F.1 / SD1.5 / SDXL models.

Every request is a signed ``POST`` (HMAC-SHA1 of ``path&timestamp&nonce``, URL-safe base64 without padding,
sent as query parameters) answered with an envelope ``{"code", "msg", "data"}``. API facts: ``providers.md`` §2.

The original service put LiblibAI's ``generateParams`` fields at the top of ``parameters`` (and, for the
custom model, ``baseModelType`` beside a nested ``generateParams``). ``validate`` merges both places into one
``generateParams`` object and stores ``{"generateParams": {...}}`` (plus ``baseModelType`` for custom models);
``submit`` picks the endpoint and template from the catalog (``routes``).
"""

from .client import DEFAULT_LIBLIBAI_BASE_URL, LiblibProvider, LiblibSettings
from .errors import classify, envelope_data
from .params import OFFICIAL_F1_CHECKPOINT
from .routes import LiblibOptions, route
from .signing import sign, signed_query
from .status import parse_status

__all__ = [
    "DEFAULT_LIBLIBAI_BASE_URL",
    "OFFICIAL_F1_CHECKPOINT",
    "LiblibOptions",
    "LiblibProvider",
    "LiblibSettings",
    "classify",
    "envelope_data",
    "parse_status",
    "route",
    "sign",
    "signed_query",
]
