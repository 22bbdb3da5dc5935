"""Provider clients: error codes to categories, task payloads to states, and the HTTP layer on loopback.

Payloads are the examples recorded in providers.md; the HTTP tests use a tiny aiohttp server on 127.0.0.1
(tests/servers.py), scripted to misbehave for the fault cases.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from imaged.catalog import Catalog, ModelSpec
from imaged.contract import ErrorCategory
from imaged.errors import ProviderError
from imaged.providers import aliyun, liblibai
from imaged.providers.aliyun import AliyunProvider, AliyunSettings
from imaged.providers.base import Credential, HttpReply, Provider, ProviderState, parse_retry_after
from imaged.providers.liblibai import LiblibProvider, LiblibSettings, sign

from ..servers import Handler, answer, free_port, hang, serve

C = ErrorCategory

# --- DashScope error codes -------------------------------------------------------------------------------------

DASHSCOPE_CODES: list[tuple[int, str, ErrorCategory, bool]] = [
    (400, "InvalidParameter", C.INVALID_REQUEST, False),
    (400, "BadRequest.EmptyInput", C.INVALID_REQUEST, False),
    (400, "BadRequest.EmptyModel", C.INVALID_REQUEST, False),
    (400, "InvalidURL", C.INVALID_REQUEST, False),
    (400, "DataInspectionFailed", C.CONTENT_POLICY, False),
    (400, "IPInfringementSuspect", C.CONTENT_POLICY, False),
    (400, "Arrearage", C.QUOTA, False),
    (403, "Arrearage", C.QUOTA, False),
    (401, "InvalidApiKey", C.AUTH, False),
    (403, "AccessDenied", C.AUTH, False),
    (403, "AccessDenied.Unpurchased", C.AUTH, False),
    (403, "AllocationQuota.FreeTierOnly", C.QUOTA, False),
    (404, "ModelNotFound", C.INVALID_REQUEST, False),
    (429, "Throttling", C.RATE_LIMITED, True),
    (429, "Throttling.RateQuota", C.RATE_LIMITED, True),
    (429, "Throttling.BurstRate", C.RATE_LIMITED, True),
    (429, "Throttling.AllocationQuota", C.RATE_LIMITED, True),
    (500, "InternalError", C.PROVIDER_ERROR, True),
    (500, "InternalError.Timeout", C.PROVIDER_ERROR, True),
    # unknown codes fall back on the HTTP status
    (503, "SomethingNew", C.PROVIDER_ERROR, True),
    (502, "", C.PROVIDER_ERROR, True),
    (418, "SomethingNew", C.PROVIDER_ERROR, False),
    (429, "SomethingNew", C.RATE_LIMITED, True),
]


@pytest.mark.parametrize(("status", "code", "category", "retryable"), DASHSCOPE_CODES)
def test_dashscope_error_codes(status: int, code: str, category: ErrorCategory, retryable: bool) -> None:
    body = {"code": code, "message": "something happened", "request_id": "r-1"}
    error = aliyun.error_from_reply(HttpReply(status, body, True, retry_after=None), "DashScope submit")
    assert (error.category, error.retryable) == (category, retryable)
    assert error.code == (code or f"http_{status}")
    assert error.provider_status == status
    assert "something happened" in error.message


def test_dashscope_codes_in_failed_tasks() -> None:
    for _, code, category, retryable in DASHSCOPE_CODES[:-4]:
        info = aliyun.error_info(code, "m")
        assert (info.category, info.retryable, info.code) == (category, retryable, code)
    unknown = aliyun.error_info("SomethingNew", "m")
    assert (unknown.category, unknown.retryable) == (C.PROVIDER_ERROR, False)


def test_dashscope_non_json_error_body() -> None:
    error = aliyun.error_from_reply(HttpReply(502, None, False), "DashScope submit")
    assert (error.category, error.retryable, error.code) == (C.PROVIDER_ERROR, True, "http_502")
    assert "HTTP 502" in error.message


def test_dashscope_retry_after_is_kept() -> None:
    error = aliyun.error_from_reply(HttpReply(429, {"code": "Throttling"}, True, retry_after=3.0), "x")
    assert error.retry_after == 3.0


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 8, 16, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    for value in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(value) is None


# --- DashScope task payloads (providers.md) ---------------------------------------------------------------------

RESULT_URL = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1.png?Expires=1736409850"


def task(status: str, **output: Any) -> dict[str, Any]:
    return {"request_id": "4909100c", "output": {"task_id": "0385dc79", "task_status": status, **output}}


def test_dashscope_queued_and_running() -> None:
    for status in ("PENDING", "SUSPENDED"):
        assert aliyun.parse_task(task(status)).state is ProviderState.QUEUED
    running = aliyun.parse_task(task("RUNNING", task_metrics={"TOTAL": 4, "SUCCEEDED": 1, "FAILED": 1}))
    assert running.state is ProviderState.RUNNING and running.progress == 0.5
    assert aliyun.parse_task(task("RUNNING")).progress is None


def test_dashscope_succeeded() -> None:
    body = {
        "request_id": "4909100c",
        "output": {
            "task_id": "0385dc79",
            "task_status": "SUCCEEDED",
            "submit_time": "2025-01-08 16:03:59.840",
            "scheduled_time": "2025-01-08 16:03:59.863",
            "end_time": "2025-01-08 16:04:10.660",
            "results": [
                {"orig_prompt": "a cat", "actual_prompt": "a fluffy cat on grass", "url": RESULT_URL}
            ],
            "task_metrics": {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0},
        },
        "usage": {"image_count": 1},
    }
    result = aliyun.parse_task(body, {"prompt": "a cat", "seed": 42})
    assert result.state is ProviderState.SUCCEEDED and result.progress == 1.0 and result.error is None
    assert [(image.index, image.url, image.seed) for image in result.images] == [(0, RESULT_URL, 42)]
    assert result.failed_images == []
    assert result.info == {"usage": {"image_count": 1}, "actual_prompt": "a fluffy cat on grass"}


def test_dashscope_partial_success() -> None:
    body = task(
        "SUCCEEDED",
        results=[
            {"url": "https://x/0.png"},
            {"code": "InternalError.Timeout", "message": "timed out"},
            {"url": "https://x/2.png"},
        ],
        task_metrics={"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1},
    )
    body["usage"] = {"image_count": 2}
    result = aliyun.parse_task(body, {"seed": 10})
    assert result.state is ProviderState.SUCCEEDED
    assert [(image.index, image.url, image.seed) for image in result.images] == [
        (0, "https://x/0.png", 10),
        (1, "https://x/2.png", 12),
    ]
    assert result.failed_images == [{"index": 1, "code": "InternalError.Timeout", "message": "timed out"}]
    assert result.info["usage"] == {"image_count": 2}


def test_dashscope_every_image_failed() -> None:
    body = task("SUCCEEDED", results=[{"code": "DataInspectionFailed", "message": "output moderated"}] * 2)
    result = aliyun.parse_task(body)
    assert result.state is ProviderState.FAILED and result.images == []
    assert result.error is not None
    assert (result.error.category, result.error.code, result.error.retryable) == (
        C.CONTENT_POLICY,
        "DataInspectionFailed",
        False,
    )
    assert len(result.failed_images) == 2


def test_dashscope_failed() -> None:
    body = task(
        "FAILED",
        code="InvalidParameter",
        message="size is invalid",
        task_metrics={"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 1},
    )
    result = aliyun.parse_task(body)
    assert result.state is ProviderState.FAILED and result.error is not None
    assert (result.error.category, result.error.code) == (C.INVALID_REQUEST, "InvalidParameter")
    assert "size is invalid" in result.error.message
    moderated = aliyun.parse_task(task("FAILED", code="DataInspectionFailed", message="inappropriate"))
    assert moderated.error is not None and moderated.error.category is C.CONTENT_POLICY


def test_dashscope_canceled_and_unknown() -> None:
    assert aliyun.parse_task(task("CANCELED")).state is ProviderState.CANCELED
    unknown = aliyun.parse_task(
        {"output": {"task_id": "0385dc79", "task_status": "UNKNOWN"}, "request_id": "r"}
    )
    assert unknown.state is ProviderState.FAILED and unknown.error is not None
    assert unknown.error.category is C.PROVIDER_ERROR and not unknown.error.retryable
    assert "unknown or expired" in unknown.error.message


@pytest.mark.parametrize(
    "body",
    [None, [], {"request_id": "r"}, {"output": "x"}, task("DANCING"), task("SUCCEEDED"), {"output": {}}],
)
def test_dashscope_malformed_task(body: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        aliyun.parse_task(body)
    assert caught.value.code == "malformed_response" and caught.value.retryable


# --- LiblibAI error codes ---------------------------------------------------------------------------------------

LIBLIB_CODES: list[tuple[int, ErrorCategory, bool]] = [
    (401, C.AUTH, False),
    (403, C.AUTH, False),
    (429, C.RATE_LIMITED, True),
    (100000, C.INVALID_REQUEST, False),
    (100010, C.AUTH, False),
    (100020, C.AUTH, False),
    (100021, C.QUOTA, False),
    (100030, C.INVALID_REQUEST, False),
    (100031, C.CONTENT_POLICY, False),
    (100032, C.INVALID_REQUEST, False),
    (100050, C.INVALID_REQUEST, False),
    (100051, C.PROVIDER_ERROR, False),
    (100052, C.CONTENT_POLICY, False),
    (100053, C.INVALID_REQUEST, False),
    (100054, C.RATE_LIMITED, True),
    (100055, C.CONTENT_POLICY, False),
    (100120, C.INVALID_REQUEST, False),
    (200000, C.PROVIDER_ERROR, True),
    (200001, C.INVALID_REQUEST, False),
    (210000, C.PROVIDER_ERROR, True),
]


@pytest.mark.parametrize(("code", "category", "retryable"), LIBLIB_CODES)
def test_liblib_envelope_codes(code: int, category: ErrorCategory, retryable: bool) -> None:
    for envelope_code in (code, str(code)):  # some gateways send the code as a string
        reply = HttpReply(200, {"code": envelope_code, "msg": "oops", "data": None}, True)
        with pytest.raises(ProviderError) as caught:
            liblibai.envelope_data(reply, "LiblibAI submit")
        error = caught.value
        assert (error.category, error.retryable, error.code) == (category, retryable, str(code))
        assert error.provider_status == 200 and "oops" in error.message


@pytest.mark.parametrize(("code", "category", "retryable"), LIBLIB_CODES)
def test_liblib_http_status_codes(code: int, category: ErrorCategory, retryable: bool) -> None:
    if code < 1000:  # an HTTP status, with or without an envelope
        replies = [
            HttpReply(code, None, False, retry_after=2.0),
            HttpReply(code, {"code": code, "msg": "x"}, True),
        ]
    else:  # a LiblibAI code on a non-200 reply
        replies = [
            HttpReply(400, {"code": code, "msg": "x"}, True),
            HttpReply(500, {"code": code, "msg": "x"}, True),
        ]
    for reply in replies:
        with pytest.raises(ProviderError) as caught:
            liblibai.envelope_data(reply, "LiblibAI submit")
        assert (caught.value.category, caught.value.retryable, caught.value.code) == (
            category,
            retryable,
            str(code),
        )
        assert caught.value.provider_status == reply.status
        assert caught.value.retry_after == reply.retry_after


def test_liblib_403_about_points_is_quota() -> None:
    for message in ("API plan expired", "insufficient points", "积分不足"):
        with pytest.raises(ProviderError) as caught:
            liblibai.envelope_data(HttpReply(403, {"code": 403, "msg": message}, True), "x")
        assert caught.value.category is C.QUOTA and not caught.value.retryable
    with pytest.raises(ProviderError) as caught:
        liblibai.envelope_data(HttpReply(403, {"code": 403, "msg": "access denied"}, True), "x")
    assert caught.value.category is C.AUTH


def test_liblib_concurrency_limit_waits_for_a_slot() -> None:
    with pytest.raises(ProviderError) as caught:
        liblibai.envelope_data(
            HttpReply(200, {"code": 100054, "msg": "并发任务数超限", "data": None}, True), "x"
        )
    error = caught.value
    assert (error.category, error.retryable, error.code) == (C.RATE_LIMITED, True, "100054")
    assert error.message.startswith("concurrent-task limit: waiting for a slot")


def test_liblib_unknown_codes() -> None:
    cases = [
        (HttpReply(200, {"code": 123456, "msg": "?"}, True), False),
        (HttpReply(503, None, False), True),
        (HttpReply(500, {"code": 999, "msg": "?"}, True), True),
        (HttpReply(404, {"code": 424242, "msg": "?"}, True), False),
    ]
    for reply, retryable in cases:
        with pytest.raises(ProviderError) as caught:
            liblibai.envelope_data(reply, "x")
        assert caught.value.category is C.PROVIDER_ERROR and caught.value.retryable is retryable


@pytest.mark.parametrize(
    "reply",
    [
        HttpReply(200, None, False),
        HttpReply(200, {"msg": "no code"}, True),
        HttpReply(200, {"code": 0, "msg": "", "data": None}, True),
        HttpReply(200, ["not", "an", "envelope"], True),
    ],
)
def test_liblib_malformed_envelope(reply: HttpReply) -> None:
    with pytest.raises(ProviderError) as caught:
        liblibai.envelope_data(reply, "x")
    assert caught.value.code == "malformed_response" and caught.value.retryable


def test_liblib_success_envelope() -> None:
    reply = HttpReply(
        200, {"code": 0, "msg": "", "data": {"generateUuid": "8dcbfa2997444899b71357ccb7db378b"}}, True
    )
    assert liblibai.envelope_data(reply, "x") == {"generateUuid": "8dcbfa2997444899b71357ccb7db378b"}


# --- LiblibAI status payloads ------------------------------------------------------------------------------------

IMAGE_URL = "https://liblibai-online.liblib.cloud/sd-images/08efe30c.png"


def status(generate_status: int, **data: Any) -> dict[str, Any]:
    return {"generateUuid": "8dcbfa2997444899b71357ccb7db378b", "generateStatus": generate_status, **data}


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (1, ProviderState.QUEUED),
        (2, ProviderState.RUNNING),
        (3, ProviderState.RUNNING),
        (4, ProviderState.RUNNING),
    ],
)
def test_liblib_waiting_and_running(code: int, state: ProviderState) -> None:
    result = liblibai.parse_status(status(code, percentCompleted=0.4, generateMsg=""))
    assert result.state is state and result.progress == 0.4 and result.error is None


def test_liblib_success() -> None:
    data = status(
        5,
        percentCompleted=1,
        generateMsg="",
        pointsCost=10,
        accountBalance=1356402,
        images=[{"imageUrl": IMAGE_URL, "seed": 12345, "auditStatus": 3}],
    )
    result = liblibai.parse_status(data)
    assert result.state is ProviderState.SUCCEEDED and result.progress == 1.0
    assert [(i.index, i.url, i.seed, i.audit_status) for i in result.images] == [(0, IMAGE_URL, 12345, 3)]
    assert result.info == {"pointsCost": 10, "accountBalance": 1356402}
    assert result.failed_images == []


def test_liblib_blocked_images() -> None:
    images = [
        {"imageUrl": "https://x/0.png", "seed": 1, "auditStatus": 4},
        {"imageUrl": "https://x/1.png", "seed": 2, "auditStatus": 3},
    ]
    partial = liblibai.parse_status(status(5, images=images))
    assert partial.state is ProviderState.SUCCEEDED
    assert [(i.index, i.url) for i in partial.images] == [(0, "https://x/1.png")]
    assert partial.failed_images == [
        {
            "index": 0,
            "seed": 1,
            "auditStatus": 4,
            "code": "audit_blocked",
            "message": "blocked by LiblibAI's content review",
        }
    ]
    blocked = liblibai.parse_status(status(5, images=images[:1], pointsCost=10))
    assert blocked.state is ProviderState.FAILED and blocked.error is not None
    assert (blocked.error.category, blocked.error.retryable) == (C.CONTENT_POLICY, False)
    assert blocked.info == {"pointsCost": 10}
    assert len(blocked.failed_images) == 1


def test_liblib_success_without_images_means_all_blocked() -> None:
    # `images` holds approved images only: none at all means review blocked every one.
    result = liblibai.parse_status(status(5, images=[]))
    assert result.state is ProviderState.FAILED and result.error is not None
    assert result.error.category is C.CONTENT_POLICY and not result.error.retryable


def test_liblib_failed_and_timed_out() -> None:
    failed = liblibai.parse_status(status(6, generateMsg="model crashed"))
    assert failed.state is ProviderState.FAILED and failed.error is not None
    assert (failed.error.category, failed.error.retryable) == (C.PROVIDER_ERROR, False)
    assert "model crashed" in failed.error.message
    timed_out = liblibai.parse_status(status(7, generateMsg=""))
    assert timed_out.state is ProviderState.FAILED and timed_out.error is not None
    assert (timed_out.error.category, timed_out.error.retryable) == (C.TIMEOUT, False)
    assert "refunded" in timed_out.error.message


@pytest.mark.parametrize(
    "data", [None, {}, status(0), status(8), {"generateStatus": "5"}, {"generateStatus": True}]
)
def test_liblib_malformed_status(data: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        liblibai.parse_status(data)
    assert caught.value.code == "malformed_response" and caught.value.retryable


# --- HTTP on loopback ---------------------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def spec_of(catalog: Catalog, name: str) -> ModelSpec:
    spec = catalog.get(name)
    assert spec is not None
    return spec


API_KEY = "sk-test-secret-0123456789"
ACCESS_KEY = "ak-test"
SECRET_KEY = "liblib-secret-key"


def aliyun_credential(base_url: str) -> Credential:
    return Credential("aliyun-1", SecretStr(API_KEY), None, base_url + "/api/v1", 2)


def liblib_credential(base_url: str) -> Credential:
    return Credential("liblibai-1", SecretStr(ACCESS_KEY), SecretStr(SECRET_KEY), base_url, 5)


class FastAliyun(AliyunProvider):
    request_timeout_s = 0.3


class FastLiblib(LiblibProvider):
    request_timeout_s = 0.3


async def test_dashscope_round_trip(session: aiohttp.ClientSession, catalog: Catalog) -> None:
    seen: list[tuple[str, dict[str, str], Any]] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), await request.json()))
        return web.json_response({"output": {"task_status": "PENDING", "task_id": "t-1"}, "request_id": "r"})

    async def query(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), None))
        return web.json_response(
            {
                "request_id": "r",
                "output": {
                    "task_id": "t-1",
                    "task_status": "SUCCEEDED",
                    "results": [{"url": "https://x/0.png"}],
                },
                "usage": {"image_count": 1},
            }
        )

    async def cancel(request: web.Request) -> web.Response:
        if request.match_info["task_id"] == "t-1":
            return web.json_response({"request_id": "r"})
        return web.json_response({"code": "UnsupportedOperation", "message": "not PENDING"}, status=400)

    routes = [
        ("POST", "/api/v1/services/aigc/text2image/image-synthesis", submit),
        ("GET", "/api/v1/tasks/{task_id}", query),
        ("POST", "/api/v1/tasks/{task_id}/cancel", cancel),
    ]
    async with serve(routes) as server:
        provider = AliyunProvider(AliyunSettings(), session)
        spec = spec_of(catalog, "wanx2.1-t2i-turbo")
        params = provider.validate(spec, {"prompt": "cat", "size": "1024*768"})
        cred = aliyun_credential(server.url)
        assert await provider.submit(cred, spec, params) == "t-1"
        result = await provider.poll(cred, spec, "t-1", params)
        assert result.state is ProviderState.SUCCEEDED and [i.url for i in result.images] == [
            "https://x/0.png"
        ]
        assert await provider.cancel(cred, spec, "t-1") is True
        assert await provider.cancel(cred, spec, "t-2") is False

    path, headers, body = seen[0]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["X-DashScope-Async"] == "enable"
    assert headers["Content-Type"].startswith("application/json")
    assert body == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "cat"},
        "parameters": {"size": "1024*768", "n": 1},
    }
    path, headers, _ = seen[1]
    assert path == "/api/v1/tasks/t-1" and headers["Authorization"] == f"Bearer {API_KEY}"
    assert "X-DashScope-Async" not in headers


# Fault servers: one provider endpoint scripted to misbehave, and the ProviderError its client must make of it.

ENDPOINTS: dict[tuple[str, str], tuple[str, str]] = {
    ("aliyun", "submit"): ("POST", "/api/v1/services/aigc/text2image/image-synthesis"),
    ("aliyun", "poll"): ("GET", "/api/v1/tasks/{task_id}"),
    ("liblibai", "submit"): ("POST", "/api/generate/webui/text2img/ultra"),
    ("liblibai", "poll"): ("POST", "/api/generate/webui/status"),
}


@dataclass(frozen=True)
class Fault:
    provider: str  # "aliyun" or "liblibai"
    operation: str  # "submit" or "poll"
    answer: Handler
    expected: tuple[ErrorCategory, bool, str]  # category, retryable, code
    provider_status: int | None  # None: no answer at all
    retry_after: float | None = None


HTML = answer(text="<html>oops</html>", content_type="text/html")
THROTTLED = {"code": "Throttling.RateQuota", "message": "slow down", "request_id": "r"}
BAD_KEY = {"code": "InvalidApiKey", "message": "Invalid API-key provided."}
BUSY = {"code": 100054, "msg": "concurrency limit", "data": None}

FAULTS = [
    pytest.param(
        Fault(
            "aliyun",
            "submit",
            answer(429, json=THROTTLED, headers={"Retry-After": "7"}),
            (C.RATE_LIMITED, True, "Throttling.RateQuota"),
            429,
            retry_after=7.0,
        ),
        id="dashscope-submit-throttled",
    ),
    pytest.param(
        Fault("aliyun", "submit", answer(401, json=BAD_KEY), (C.AUTH, False, "InvalidApiKey"), 401),
        id="dashscope-submit-bad-key",
    ),
    pytest.param(
        Fault("aliyun", "submit", HTML, (C.PROVIDER_ERROR, True, "malformed_response"), 200),
        id="dashscope-submit-html",
    ),
    pytest.param(
        Fault("aliyun", "poll", HTML, (C.PROVIDER_ERROR, True, "malformed_response"), 200),
        id="dashscope-poll-html",
    ),
    pytest.param(
        Fault("aliyun", "poll", answer(502, text="Bad Gateway"), (C.PROVIDER_ERROR, True, "http_502"), 502),
        id="dashscope-poll-bad-gateway",
    ),
    pytest.param(
        Fault("aliyun", "poll", hang, (C.PROVIDER_ERROR, True, "timeout"), None),
        id="dashscope-poll-no-answer",
    ),
    pytest.param(
        Fault("liblibai", "submit", answer(json=BUSY), (C.RATE_LIMITED, True, "100054"), 200),
        id="liblib-submit-concurrency-limit",
    ),
    pytest.param(
        Fault(
            "liblibai",
            "submit",
            answer(429, text="Too Many Requests", headers={"Retry-After": "2"}),
            (C.RATE_LIMITED, True, "429"),
            429,
            retry_after=2.0,
        ),
        id="liblib-submit-too-many-requests",
    ),
    pytest.param(
        Fault(
            "liblibai",
            "poll",
            answer(body=b'{"code": 0, "data": {', content_type="application/json"),
            (C.PROVIDER_ERROR, True, "malformed_response"),
            200,
        ),
        id="liblib-poll-truncated-json",
    ),
    pytest.param(
        Fault("liblibai", "poll", hang, (C.PROVIDER_ERROR, True, "timeout"), None),
        id="liblib-poll-no-answer",
    ),
]


async def call(fault: Fault, session: aiohttp.ClientSession, catalog: Catalog, base_url: str) -> object:
    """The fault's operation through its provider's client (0.3 s request timeout) against ``base_url``."""
    provider: Provider
    if fault.provider == "aliyun":
        provider, spec = FastAliyun(AliyunSettings(), session), spec_of(catalog, "wanx2.1-t2i-turbo")
        cred = aliyun_credential(base_url)
    else:
        provider, spec = FastLiblib(LiblibSettings(), session), spec_of(catalog, "star-3-alpha-t2i")
        cred = liblib_credential(base_url)
    params = provider.validate(spec, {"prompt": "cat"})
    if fault.operation == "submit":
        return await provider.submit(cred, spec, params)
    return await provider.poll(cred, spec, "t", params)


@pytest.mark.parametrize("fault", FAULTS)
async def test_http_faults_become_provider_errors(
    fault: Fault, session: aiohttp.ClientSession, catalog: Catalog
) -> None:
    method, path = ENDPOINTS[fault.provider, fault.operation]
    async with serve([(method, path, fault.answer)]) as server:
        with pytest.raises(ProviderError) as caught:
            await call(fault, session, catalog, server.url)
    error = caught.value
    assert (error.category, error.retryable, error.code) == fault.expected
    assert (error.provider_status, error.retry_after) == (fault.provider_status, fault.retry_after)
    for secret in (API_KEY, ACCESS_KEY, SECRET_KEY):
        assert secret not in error.message


async def test_connection_errors(session: aiohttp.ClientSession, catalog: Catalog) -> None:
    base = f"http://127.0.0.1:{free_port()}"
    dashscope = spec_of(catalog, "wanx2.1-t2i-turbo")
    with pytest.raises(ProviderError) as caught:
        await AliyunProvider(AliyunSettings(), session).poll(aliyun_credential(base), dashscope, "t", {})
    assert (caught.value.code, caught.value.retryable, caught.value.category) == (
        "connection_error",
        True,
        C.PROVIDER_ERROR,
    )
    assert API_KEY not in caught.value.message

    star3 = spec_of(catalog, "star-3-alpha-t2i")
    with pytest.raises(ProviderError) as caught:
        await LiblibProvider(LiblibSettings(), session).poll(liblib_credential(base), star3, "u", {})
    assert (caught.value.code, caught.value.retryable) == ("connection_error", True)
    for secret in ("Signature", "AccessKey", ACCESS_KEY, SECRET_KEY):
        assert secret not in caught.value.message


async def test_liblib_round_trip(session: aiohttp.ClientSession, catalog: Catalog) -> None:
    seen: list[tuple[str, dict[str, str], Any]] = []

    def verify(request: web.Request) -> web.Response | None:
        query = request.query
        expected = sign(request.path, SECRET_KEY, int(query["Timestamp"]), query["SignatureNonce"])
        if query.get("AccessKey") != ACCESS_KEY or query.get("Signature") != expected:
            return web.json_response({"code": 401, "msg": "signature verification failed"}, status=401)
        return None

    async def submit(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.query), await request.json()))
        return verify(request) or web.json_response(
            {"code": 0, "msg": "", "data": {"generateUuid": "8dcbfa2997444899b71357ccb7db378b"}}
        )

    async def status_route(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.path, dict(request.query), body))
        data = {
            "generateUuid": body["generateUuid"],
            "generateStatus": 5,
            "percentCompleted": 1,
            "generateMsg": "",
            "pointsCost": 10,
            "accountBalance": 1356402,
            "images": [{"imageUrl": IMAGE_URL, "seed": 12345, "auditStatus": 3}],
        }
        return verify(request) or web.json_response({"code": 0, "msg": "", "data": data})

    routes = [
        ("POST", "/api/generate/webui/text2img/ultra", submit),
        ("POST", "/api/generate/webui/img2img", submit),
        ("POST", "/api/generate/webui/status", status_route),
    ]
    async with serve(routes) as server:
        provider = LiblibProvider(LiblibSettings(), session)
        cred = liblib_credential(server.url)
        star3 = spec_of(catalog, "star-3-alpha-t2i")
        params = provider.validate(
            star3, {"prompt": "cat", "aspectRatio": "portrait", "imgCount": 1, "steps": 30}
        )
        task_id = await provider.submit(cred, star3, params)
        assert task_id == "8dcbfa2997444899b71357ccb7db378b"
        result = await provider.poll(cred, star3, task_id, params)
        assert result.state is ProviderState.SUCCEEDED and result.images[0].url == IMAGE_URL
        assert result.info == {"pointsCost": 10, "accountBalance": 1356402}

        custom = spec_of(catalog, "liblib-custom")
        params = provider.validate(
            custom, {"baseModelType": "xl", "checkPointId": "c", "prompt": "p", "sourceImage": "https://a"}
        )
        await provider.submit(cred, custom, params)

        wrong = Credential("liblibai-1", SecretStr(ACCESS_KEY), SecretStr("wrong"), server.url, 5)
        with pytest.raises(ProviderError) as caught:
            await provider.poll(wrong, star3, task_id, params)
        assert (caught.value.category, caught.value.code) == (C.AUTH, "401")
        assert SECRET_KEY not in caught.value.message and "wrong" not in caught.value.message

    path, _query, body = seen[0]
    assert path == "/api/generate/webui/text2img/ultra"
    assert body == {
        "templateUuid": "5d7e67009b344550bc1aa6ccbfa1d7f4",
        "generateParams": {"prompt": "cat", "aspectRatio": "portrait", "imgCount": 1, "steps": 30},
    }
    assert seen[1][0] == "/api/generate/webui/status"
    assert seen[1][2] == {"generateUuid": "8dcbfa2997444899b71357ccb7db378b"}
    assert seen[2][0] == "/api/generate/webui/img2img"
    assert seen[2][2]["templateUuid"] == "9c7d531dc75f476aa833b3d452b8f7ad"
    assert seen[2][2]["generateParams"] == {
        "checkPointId": "c",
        "prompt": "p",
        "imgCount": 1,
        "sourceImage": "https://a",
    }
    nonces = {entry[1]["SignatureNonce"] for entry in seen}
    assert len(nonces) == len(seen)  # every request signed afresh


def test_region_base_urls() -> None:
    assert aliyun.REGION_BASE_URLS["cn-beijing"] == "https://dashscope.aliyuncs.com/api/v1"
    assert aliyun.REGION_BASE_URLS["ap-southeast-1"] == "https://dashscope-intl.aliyuncs.com/api/v1"
    assert json.dumps(aliyun.REGION_BASE_URLS)  # plain strings
