"""Partial success, cancel, and moderation at each stage, through both clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from imaged.contract import ErrorCategory
from imaged.providers.base import ProviderState

from .conftest import ClientFactory
from .harness import BASIC, COUNT_KEY, Emulator

pytestmark = pytest.mark.timeout(30)

S = ProviderState
C = ErrorCategory
LONG_TASK_S = 60.0

# --- partial success -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialCase:
    provider: str
    variant: str | None
    failed_codes: list[str]
    """Codes of the failed entries the client records (LiblibAI's "audit" variant drops them unlisted)."""


PARTIAL_CASES = [
    PartialCase("aliyun", None, ["InternalError.Timeout", "InternalError.Timeout"]),
    PartialCase("liblibai", "audit_listed", ["audit_blocked", "audit_blocked"]),
    PartialCase("liblibai", "audit", []),
]


@pytest.mark.parametrize(
    "case", PARTIAL_CASES, ids=lambda case: f"{case.provider}-{case.variant or 'results'}"
)
async def test_partial_success_keeps_the_delivered_images(
    case: PartialCase, emu: Emulator, make_client: ClientFactory
) -> None:
    """Four images asked, the last two fail: SUCCEEDED with two images, the failed ones recorded."""
    client = make_client(case.provider)
    extra = {} if case.variant is None else {"variant": case.variant}
    await emu.fault(case.provider, "poll", "partial", **extra)
    model, params = BASIC[case.provider]
    task = await client.submit(model, {**params, COUNT_KEY[case.provider]: 4})
    result = (await client.run(task)).last

    assert result.state is S.SUCCEEDED and result.error is None
    assert [image.index for image in result.images] == [0, 1]
    assert all(f"_{task.id}_{position}_" in image.url for position, image in enumerate(result.images))
    assert [entry["code"] for entry in result.failed_images] == case.failed_codes
    assert [entry["index"] for entry in result.failed_images] == [2, 3][: len(case.failed_codes)]
    if case.provider == "aliyun":
        assert result.info["usage"] == {"image_count": 2}  # billed for the delivered images only
    else:
        assert result.info["pointsCost"] == 40
        assert all(entry["auditStatus"] == 4 for entry in result.failed_images)


# --- cancel ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelCase:
    id: str
    provider: str
    at: float | None
    """Where the task's clock is placed; None: a made-up task id."""
    canceled: bool
    after: ProviderState | None
    cancel_requests: int


CANCEL_CASES = [
    CancelCase("aliyun-pending", "aliyun", 0.1, True, S.CANCELED, 1),
    CancelCase("aliyun-running", "aliyun", 0.5, False, S.RUNNING, 1),
    CancelCase("aliyun-succeeded", "aliyun", 1.0, False, S.SUCCEEDED, 1),
    CancelCase("aliyun-unknown-task", "aliyun", None, False, None, 1),
    # LiblibAI has no cancel: the client says so without calling it
    CancelCase("liblibai-waiting", "liblibai", 0.05, False, S.QUEUED, 0),
]


@pytest.mark.parametrize("case", CANCEL_CASES, ids=lambda case: case.id)
async def test_cancel(case: CancelCase, emu: Emulator, make_client: ClientFactory) -> None:
    client = make_client(case.provider)
    await emu.configure(task_seconds=LONG_TASK_S)
    task = await client.submit()
    if case.at is None:
        task = type(task)(task.spec, task.params, "0385dc79-5ff8-4d82-bcb6-000000000000")
    else:
        emu.place(task.id, case.at)

    assert await client.cancel(task) is case.canceled

    if case.after is not None:
        assert (await client.poll(task)).state is case.after
    stats = await emu.stats(case.provider)
    assert stats["cancels"] == case.cancel_requests
    assert stats["tasks_by_state"].get("CANCELED", 0) == (1 if case.canceled else 0)


# --- moderation --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModerationCase:
    id: str
    provider: str
    stage: Literal["submit", "poll"]
    variant: str | None
    code: str
    how: Literal["raised", "reported"]
    """At output: whether the client reports FAILED from the poll or raises the (non-retryable) error."""


MODERATION_CASES = [
    ModerationCase("aliyun-input", "aliyun", "submit", None, "DataInspectionFailed", "raised"),
    ModerationCase("liblibai-input", "liblibai", "submit", None, "100052", "raised"),
    ModerationCase("aliyun-output", "aliyun", "poll", None, "DataInspectionFailed", "reported"),
    ModerationCase("liblibai-output-code", "liblibai", "poll", "code", "100055", "reported"),
    ModerationCase("liblibai-output-audit", "liblibai", "poll", "audit", "audit_blocked", "reported"),
    ModerationCase(
        "liblibai-output-audit-listed", "liblibai", "poll", "audit_listed", "audit_blocked", "reported"
    ),
]


@pytest.mark.parametrize("case", MODERATION_CASES, ids=lambda case: case.id)
async def test_moderation(case: ModerationCase, emu: Emulator, make_client: ClientFactory) -> None:
    client = make_client(case.provider)
    extra = {} if case.variant is None else {"variant": case.variant}
    await emu.fault(case.provider, case.stage, "moderation", **extra)

    if case.stage == "submit":
        exc = await client.fails(client.submit, C.CONTENT_POLICY, retryable=False, code=case.code)
        assert exc.provider_status in (200, 400)
        stats = await emu.stats(case.provider)
        assert (stats["submits"], stats["rejected"]) == (0, 1)
        return

    how, error, run = await client.outcome(await client.submit())
    assert how == case.how
    assert error is not None
    assert (error.category, error.code, error.retryable) == (C.CONTENT_POLICY, case.code, False)
    if run is not None:
        assert run.last.state is S.FAILED and run.last.images == []
        if case.variant == "audit_listed":
            assert [entry["auditStatus"] for entry in run.last.failed_images] == [4]
