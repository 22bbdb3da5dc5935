"""Every provider state, observed through imaged's client polls and normalised to a ProviderState.

DashScope: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN. LiblibAI: generateStatus 1..7. The task's
clock is placed at a point of its run (the emulator computes the state from the clock), so each state is seen
deterministically; the emulator's own stats confirm the raw state it served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytest

from imaged.contract import ErrorCategory
from imaged.providers.base import ProviderState

from .conftest import ClientFactory
from .harness import INITIAL_BALANCE, Emulator, Task

pytestmark = pytest.mark.timeout(30)

S = ProviderState
C = ErrorCategory
LONG_TASK_S = 60.0
"""Tasks of the state table run this long, so that the clock placed by a test does not move meanwhile."""


@dataclass(frozen=True)
class StateCase:
    provider: str
    raw: str
    """The provider's own state (task_status or generateStatus) as `/_sim/stats` counts it."""
    state: ProviderState
    progress: float | None
    at: float = 1.0
    """Where the task's clock is placed (fraction of its run)."""
    fault: str | None = None
    """An outcome fault the task ends with."""
    action: Literal["poll", "cancel", "unknown"] = "poll"
    error: tuple[ErrorCategory, str, bool] | None = None
    """(category, code, retryable) of the poll's error."""


STATE_CASES = [
    StateCase("aliyun", "PENDING", S.QUEUED, 0.0, at=0.1),
    StateCase("aliyun", "RUNNING", S.RUNNING, 0.0, at=0.5),
    StateCase("aliyun", "SUCCEEDED", S.SUCCEEDED, 1.0),
    StateCase(
        "aliyun", "FAILED", S.FAILED, 1.0, fault="fail", error=(C.PROVIDER_ERROR, "InternalError", True)
    ),
    StateCase("aliyun", "CANCELED", S.CANCELED, 0.0, at=0.1, action="cancel"),
    StateCase(
        "aliyun", "UNKNOWN", S.FAILED, None, action="unknown", error=(C.PROVIDER_ERROR, "task_unknown", False)
    ),
    StateCase("liblibai", "1", S.QUEUED, 0.0, at=0.05),
    StateCase("liblibai", "2", S.RUNNING, 0.5, at=0.5),
    StateCase("liblibai", "3", S.RUNNING, 0.85, at=0.85),
    StateCase("liblibai", "4", S.RUNNING, 0.95, at=0.95),
    StateCase("liblibai", "5", S.SUCCEEDED, 1.0),
    StateCase(
        "liblibai", "6", S.FAILED, 1.0, fault="fail", error=(C.PROVIDER_ERROR, "generate_failed", False)
    ),
    StateCase("liblibai", "7", S.FAILED, 1.0, fault="status7", error=(C.TIMEOUT, "generate_timeout", False)),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda case: f"{case.provider}-{case.raw}")
async def test_every_state(case: StateCase, emu: Emulator, make_client: ClientFactory) -> None:
    client = make_client(case.provider)
    await emu.configure(task_seconds=LONG_TASK_S)
    if case.fault is not None:
        await emu.fault(case.provider, "poll", case.fault)
    if case.action == "unknown":
        task = Task(client.spec(), client.validate(client.spec()), "0385dc79-5ff8-4d82-bcb6-000000000000")
    else:
        task = await client.submit()
        emu.place(task.id, case.at)
    if case.action == "cancel":
        assert await client.cancel(task) is True

    result = await client.poll(task)

    assert result.state is case.state
    if case.progress is None:
        assert result.progress is None
    else:
        assert result.progress == pytest.approx(case.progress, abs=0.011)
    if case.error is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert (result.error.category, result.error.code, result.error.retryable) == case.error
    if case.state is S.SUCCEEDED:
        assert len(result.images) == 1
    else:
        assert result.images == []
    if case.action != "unknown":
        stats = await emu.stats(case.provider)
        assert stats["tasks_by_state"][case.raw] == 1


async def test_liblibai_status_7_ends_the_run(emu: Emulator, make_client: ClientFactory) -> None:
    """Status 7 is terminal (clients that forget it poll forever): FAILED, category timeout, points refunded."""
    client = make_client("liblibai")
    await emu.fault("liblibai", "poll", "status7")
    run = await client.run(await client.submit())

    assert run.last.state is S.FAILED
    assert run.last.error is not None
    assert (run.last.error.category, run.last.error.retryable) == (C.TIMEOUT, False)
    assert run.last.info == {"pointsCost": 10, "accountBalance": INITIAL_BALANCE}
    assert all(not poll.state.terminal for poll in run.polls[:-1])
    assert (await emu.stats("liblibai"))["tasks_by_state"]["7"] == 1


async def test_dashscope_timeout_at_the_provider(emu: Emulator, make_client: ClientFactory) -> None:
    """DashScope's analogue of status 7 is a FAILED task with InternalError.Timeout: a retryable provider fault."""
    client = make_client("aliyun")
    await emu.fault("aliyun", "poll", "status7")
    run = await client.run(await client.submit())

    assert run.last.state is S.FAILED
    assert run.last.error is not None
    assert (run.last.error.category, run.last.error.code, run.last.error.retryable) == (
        C.PROVIDER_ERROR,
        "InternalError.Timeout",
        True,
    )


@pytest.mark.parametrize("provider", ["aliyun", "liblibai"])
async def test_natural_run_goes_through_the_states_in_order(
    provider: str, emu: Emulator, make_client: ClientFactory
) -> None:
    """Without touching the clock: polls see queued, running, succeeded in that order, progress rising."""
    client = make_client(provider)
    await emu.configure(task_seconds=1.0)
    run = await client.run(await client.submit())

    assert run.states == [S.QUEUED, S.RUNNING, S.SUCCEEDED]
    progress: list[Any] = [poll.progress for poll in run.polls]
    assert progress == sorted(progress) and progress[-1] == 1.0
