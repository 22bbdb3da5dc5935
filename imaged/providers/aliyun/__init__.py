"""Alibaba Cloud DashScope (Model Studio), Tongyi Wanxiang: text-to-image and image editing.

Tasks are asynchronous only: submit with ``X-DashScope-Async: enable``, poll ``GET /tasks/{id}``, cancel
while ``PENDING``. API facts: ``providers.md`` §1. Parameters arrive flat (as the original service took them)
and are split into the API's ``input`` and ``parameters`` objects at submit.

``errors`` maps codes to categories, ``params`` checks a request's parameters and builds the submit body,
``replies`` reads task answers, ``client`` is the provider.
"""

from .client import DEFAULT_ALIYUN_BASE_URL, REGION_BASE_URLS, AliyunProvider, AliyunSettings
from .errors import classify, error_from_reply, error_info
from .params import request_body
from .replies import parse_task

__all__ = [
    "DEFAULT_ALIYUN_BASE_URL",
    "REGION_BASE_URLS",
    "AliyunProvider",
    "AliyunSettings",
    "classify",
    "error_from_reply",
    "error_info",
    "parse_task",
    "request_body",
]
