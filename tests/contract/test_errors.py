"""Every error category imaged's clients produce against the emulator, with its retryable flag, Retry-After and
code; validation errors before any provider call; and no secret in any error message or in the emulator's stats."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from imaged.contract import ErrorCategory
from imaged.errors import InvalidRequest

from .conftest import ClientFactory
from .harness import API_KEY, SECRET_KEY, WRONG_API_KEY, WRONG_SECRET_KEY, Emulator, Task

pytestmark = pytest.mark.timeout(30)

C = ErrorCategory
HOLD_S = 5.0
"""How long a "timeout" fault holds a request; the client gives up long before (CLIENT_TIMEOUT_S)."""
CLIENT_TIMEOUT_S = 0.3
SOURCE = "https://example.com/source/fox.png"


@dataclass(frozen=True)
class ErrorCase:
    id: str
    provider: str
    op: Literal["submit", "poll", "cancel"]
    category: ErrorCategory
    retryable: bool
    code: str | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    """Changes to the catalog entry (a model or template the provider does not know)."""
    settings: dict[str, Any] | None = None
    """Settings of the failing client (the task of a poll or cancel is submitted by a correct one)."""
    config: dict[str, Any] | None = None
    """Emulator settings."""
    fault: dict[str, Any] | None = None
    """A transport fault on the operation, fired once."""
    before: int = 0
    """Successful submits first (to fill a rate or concurrency limit)."""
    retry_after: float | None = None
    status: int | None = None
    """The HTTP status the error records."""
    stats: dict[str, int] | None = None
    """Provider counters of the emulator afterwards."""
    unknown_task: bool = False
    """Poll or cancel a made-up task id instead of a submitted task."""


def _both(
    name: str, op: Literal["submit", "poll", "cancel"], category: ErrorCategory, retryable: bool, **kw: Any
) -> list[ErrorCase]:
    """The same scenario through both providers."""
    return [
        ErrorCase(f"{provider}-{name}", provider, op, category, retryable, **kw)
        for provider in ("aliyun", "liblibai")
    ]


ERROR_CASES: list[ErrorCase] = [
    # auth ---------------------------------------------------------------------------------------------------------
    ErrorCase(
        "aliyun-wrong-key-submit", "aliyun", "submit", C.AUTH, False, code="InvalidApiKey",
        settings={"api_key": WRONG_API_KEY}, status=401, stats={"auth_failures": 1, "submits": 0},
    ),
    ErrorCase(
        "aliyun-wrong-key-poll", "aliyun", "poll", C.AUTH, False, code="InvalidApiKey",
        settings={"api_key": WRONG_API_KEY}, status=401,
    ),
    ErrorCase(
        "aliyun-wrong-key-cancel", "aliyun", "cancel", C.AUTH, False, code="InvalidApiKey",
        settings={"api_key": WRONG_API_KEY}, status=401,
    ),
    ErrorCase(
        "liblibai-wrong-secret-submit", "liblibai", "submit", C.AUTH, False, code="401",
        settings={"secret_key": WRONG_SECRET_KEY}, status=401,
        stats={"signature_failures": 1, "submits": 0},
    ),
    ErrorCase(
        "liblibai-wrong-secret-poll", "liblibai", "poll", C.AUTH, False, code="401",
        settings={"secret_key": WRONG_SECRET_KEY}, status=401,
    ),
    ErrorCase(
        "liblibai-unknown-access-key", "liblibai", "submit", C.AUTH, False, code="401",
        settings={"access_key": "no-such-access-key"}, status=401,
    ),
    ErrorCase(
        "liblibai-wrong-secret-in-envelope", "liblibai", "submit", C.AUTH, False, code="401",
        settings={"secret_key": WRONG_SECRET_KEY}, config={"liblib_error_style": "envelope"}, status=200,
    ),
    # quota --------------------------------------------------------------------------------------------------------
    ErrorCase(
        "liblibai-points-exhausted", "liblibai", "submit", C.QUOTA, False, code="100021",
        config={"liblib_initial_balance": 5}, stats={"rejected": 1, "submits": 0},
    ),
    # rate limited: injected 429 with Retry-After, and the emulator's own limits ----------------------------------
    *_both("429-submit", "submit", C.RATE_LIMITED, True, fault={"kind": "http_429", "retry_after": 2.5}, retry_after=3.0, status=429),
    *_both("429-poll", "poll", C.RATE_LIMITED, True, fault={"kind": "http_429", "retry_after": 2}, retry_after=2.0, status=429),
    ErrorCase(
        "aliyun-429-cancel", "aliyun", "cancel", C.RATE_LIMITED, True, code="Throttling.RateQuota",
        fault={"kind": "http_429", "retry_after": 1}, retry_after=1.0,
    ),
    ErrorCase(
        "aliyun-submit-rate", "aliyun", "submit", C.RATE_LIMITED, True, code="Throttling.RateQuota",
        config={"dashscope_submit_per_second": 1.0}, before=1, status=429, stats={"rate_limited": 1, "submits": 1},
    ),
    ErrorCase(
        "aliyun-concurrency-cap", "aliyun", "submit", C.RATE_LIMITED, True, code="Throttling",
        config={"dashscope_concurrency_limit": 1}, before=1, status=429, stats={"concurrency_limit_hits": 1},
    ),
    ErrorCase(
        "liblibai-submit-rate", "liblibai", "submit", C.RATE_LIMITED, True, code="429",
        config={"liblib_submit_per_second": 1.0}, before=1, retry_after=1.0, status=429, stats={"rate_limited": 1},
    ),
    ErrorCase(
        "liblibai-submit-rate-in-envelope", "liblibai", "submit", C.RATE_LIMITED, True, code="429",
        config={"liblib_submit_per_second": 1.0, "liblib_error_style": "envelope"}, before=1, retry_after=1.0, status=200,
    ),
    ErrorCase(
        "liblibai-100054-concurrency-cap", "liblibai", "submit", C.RATE_LIMITED, True, code="100054",
        config={"liblib_concurrency_limit": 1}, before=1, status=200, stats={"concurrency_limit_hits": 1, "submits": 1},
    ),
    # provider errors: HTTP 500, malformed JSON, connection reset, no answer ---------------------------------------
    *_both("500-submit", "submit", C.PROVIDER_ERROR, True, fault={"kind": "http_500"}, status=500),
    *_both("500-poll", "poll", C.PROVIDER_ERROR, True, fault={"kind": "http_500"}, status=500),
    ErrorCase("aliyun-500-cancel", "aliyun", "cancel", C.PROVIDER_ERROR, True, code="InternalError", fault={"kind": "http_500"}),
    *_both("malformed-json-submit", "submit", C.PROVIDER_ERROR, True, code="malformed_response", fault={"kind": "malformed_json"}),
    *_both("malformed-json-poll", "poll", C.PROVIDER_ERROR, True, code="malformed_response", fault={"kind": "malformed_json"}),
    *_both("reset-submit", "submit", C.PROVIDER_ERROR, True, code="connection_error", fault={"kind": "reset"}, stats={"submits": 0}),
    # two resets: aiohttp itself retries an idempotent request (DashScope's GET poll) once on a reused connection
    *_both("reset-poll", "poll", C.PROVIDER_ERROR, True, code="connection_error", fault={"kind": "reset", "count": 2}),
    # the reply is lost after the task was created: retryable, and the emulator did create it (the double-submit
    # window that imaged's submit_unknown policy handles)
    *_both(
        "reset-after-submit", "submit", C.PROVIDER_ERROR, True, code="connection_error",
        fault={"kind": "reset", "phase": "after"}, stats={"submits": 1},
    ),
    *_both("timeout-submit", "submit", C.PROVIDER_ERROR, True, code="timeout", fault={"kind": "timeout", "seconds": HOLD_S}),
    *_both("timeout-poll", "poll", C.PROVIDER_ERROR, True, code="timeout", fault={"kind": "timeout", "seconds": HOLD_S}),
    ErrorCase("liblibai-unknown-task", "liblibai", "poll", C.PROVIDER_ERROR, False, code="100051", unknown_task=True),
    # invalid requests only the provider rejects (imaged's validation lets them through) ---------------------------
    ErrorCase(
        "aliyun-oss-url", "aliyun", "submit", C.INVALID_REQUEST, False, code="InvalidURL",
        model="wanx2.1-imageedit",
        params={"function": "colorization", "prompt": "in colour", "base_image_url": "oss://bucket/fox.png"},
        status=400, stats={"rejected": 1, "submits": 0},
    ),
    ErrorCase(
        "aliyun-unknown-model", "aliyun", "submit", C.INVALID_REQUEST, False, code="ModelNotFound",
        spec={"name": "wanx9.9-t2i-imaginary"}, status=404,
    ),
    ErrorCase(
        "liblibai-unknown-template", "liblibai", "submit", C.INVALID_REQUEST, False, code="100120",
        spec={"options": {"template": "0" * 32}}, stats={"rejected": 1, "submits": 0},
    ),
    ErrorCase(
        "liblibai-bad-passthrough-seed", "liblibai", "submit", C.INVALID_REQUEST, False, code="100000",
        params={"prompt": "a red fox", "generateParams": {"seed": -5}},
    ),
    ErrorCase(
        "liblibai-bad-hires-size", "liblibai", "submit", C.INVALID_REQUEST, False, code="100000",
        model="liblib-custom",
        params={"baseModelType": "f1", "prompt": "a red fox", "hiResFixInfo": {"resizedWidth": 4096}},
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda case: case.id)
async def test_error_category(
    case: ErrorCase, emu: Emulator, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = make_client(case.provider)
    bad = make_client(case.provider, **(case.settings or {}))
    monkeypatch.setattr(type(bad.provider), "request_timeout_s", CLIENT_TIMEOUT_S)
    if case.config:
        await emu.configure(**case.config)
    for _ in range(case.before):
        await good.submit()
    call: Callable[[], Awaitable[object]]
    if case.op == "submit":
        spec = bad.spec(case.model, **(case.spec or {}))
        call = functools.partial(bad.provider.submit, bad.credential, spec, bad.validate(spec, case.params))
    else:
        task = await good.submit()
        if case.unknown_task:
            task = Task(task.spec, task.params, "f" * 32)
        call = functools.partial(bad.poll if case.op == "poll" else bad.cancel, task)
    if case.fault is not None:
        await emu.fault(case.provider, case.op, **case.fault)

    exc = await bad.fails(call, case.category, retryable=case.retryable, code=case.code)
    assert exc.retry_after == case.retry_after
    if case.status is not None:
        assert exc.provider_status == case.status
    if case.stats:
        stats = await emu.stats(case.provider)
        assert {name: stats[name] for name in case.stats} == case.stats


def test_every_category_the_clients_produce_is_covered() -> None:
    covered = {(case.provider, case.category) for case in ERROR_CASES}
    for provider in ("aliyun", "liblibai"):
        for category in (C.AUTH, C.RATE_LIMITED, C.PROVIDER_ERROR, C.INVALID_REQUEST):
            assert (provider, category) in covered
    assert (
        "liblibai",
        C.QUOTA,
    ) in covered  # the emulator has no DashScope arrears (mapped in the unit tests)
    # content_policy: test_outcomes.py (moderation); timeout: test_states.py (LiblibAI status 7)


async def test_dashscope_poll_absorbs_one_reset(emu: Emulator, make_client: ClientFactory) -> None:
    """A single reset of a DashScope poll (GET, idempotent) on a reused connection is retried by aiohttp itself;
    LiblibAI's poll is a POST and is not: one reset already reaches imaged as a retryable error."""
    for provider in ("aliyun", "liblibai"):
        client = make_client(provider)
        task = await client.submit()
        await emu.fault(provider, "poll", "reset")
        if provider == "aliyun":
            assert (await client.run(task)).last.state.terminal
        else:
            await client.fails(
                functools.partial(client.poll, task),
                C.PROVIDER_ERROR,
                retryable=True,
                code="connection_error",
            )
    faults = await emu.faults()
    assert [fault["hits"] for fault in faults] == [1, 1]


# --- validation: invalid_request before any provider call -------------------------------------------------------

VALIDATION_CASES = [
    ("aliyun", "wanx2.1-t2i-turbo", {"prompt": "a fox", "size": "1024x1024"}, "parameters.size"),
    ("aliyun", "wanx2.1-t2i-plus", {"prompt": "a fox", "n": 5}, "parameters.n"),
    ("aliyun", "wanx2.0-t2i-turbo", {"prompt": "a fox", "style": "<anime>"}, "parameters.style"),
    ("aliyun", "wanx2.1-imageedit", {"prompt": "a fox", "base_image_url": SOURCE}, "parameters.function"),
    ("liblibai", "star-3-alpha-t2i", {"prompt": "a fox", "imgCount": 9}, "imgCount"),
    ("liblibai", "star-3-alpha-i2i", {"prompt": "a fox", "sourceImage": "fox.png"}, "sourceImage"),
    ("liblibai", "liblib-custom", {"baseModelType": "sd", "prompt": "a fox"}, "parameters.checkPointId"),
    (
        "liblibai",
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "a fox", "colour": 1},
        "parameters.colour",
    ),
]


@pytest.mark.parametrize(
    ("provider", "model", "params", "field"),
    VALIDATION_CASES,
    ids=[f"{c[1]}-{c[3]}" for c in VALIDATION_CASES],
)
async def test_validation_fails_before_any_provider_call(
    provider: str, model: str, params: dict[str, Any], field: str, emu: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(provider)
    with pytest.raises(InvalidRequest) as caught:
        client.validate(client.spec(model), params)
    assert (caught.value.category, caught.value.retryable) == (C.INVALID_REQUEST, False)
    assert field in caught.value.message
    stats = await emu.stats(provider)
    assert stats["submits"] + stats["rejected"] + stats["polls"] + stats["signature_failures"] == 0


# --- secrets -------------------------------------------------------------------------------------------------------


async def test_no_secret_in_the_emulator_stats(emu: Emulator, make_client: ClientFactory) -> None:
    """The clients' keys (and the signatures the LiblibAI client computed) appear in no stats the emulator serves."""
    for provider in ("aliyun", "liblibai"):
        client = make_client(provider)
        await client.run(await client.submit())
    assert client.secrets.queries, "the LiblibAI client signed nothing"
    text = await emu.stats_text()
    assert API_KEY not in text and SECRET_KEY not in text
    client.secrets.assert_absent(text)
