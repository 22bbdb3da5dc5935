"""Limits without a database: fair shares, a replica alone (Shares), rate turns, and ProviderLimits slots/rotation."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from imaged.contract import ErrorCategory
from imaged.errors import ProviderError, TaskError
from imaged.limits import ProviderLimits
from imaged.metrics import Metrics
from imaged.shares import PHASES, RateTurns, Shares, fair_shares

from .fakes import make_credential, wait_until

pytestmark = pytest.mark.timeout(10)

#: slack for comparing wall-clock times taken around asyncio sleeps (timer granularity, float rounding)
CLOCK_SLACK_S = 0.001


def auth_error() -> ProviderError:
    return ProviderError("invalid api key", code="InvalidApiKey", category=ErrorCategory.AUTH)


def quota_error() -> ProviderError:
    return ProviderError("account in arrears", code="Arrearage", category=ErrorCategory.QUOTA)


# --- fair_shares -----------------------------------------------------------------------------------------------


def test_fair_shares_split_evenly_with_the_remainder_in_replica_id_order() -> None:
    assert fair_shares(5, {"a": 5, "b": 5, "c": 5}) == {"a": 2, "b": 2, "c": 1}
    assert fair_shares(5, {"c": 5, "b": 5, "a": 5}) == {"a": 2, "b": 2, "c": 1}
    assert fair_shares(6, {"a": 5, "b": 5, "c": 5}) == {"a": 2, "b": 2, "c": 2}
    assert fair_shares(16, {"r1": 16, "r2": 16}) == {"r1": 8, "r2": 8}


def test_fair_shares_give_nobody_more_than_it_wants() -> None:
    assert fair_shares(10, {"a": 1, "b": 3, "c": 20}) == {"a": 1, "b": 3, "c": 6}
    assert fair_shares(4, {"a": 0, "b": 2}) == {"a": 0, "b": 2}
    assert fair_shares(5, {"a": 1, "b": 1}) == {"a": 1, "b": 1}
    assert fair_shares(0, {"a": 3}) == {"a": 0}
    assert fair_shares(3, {}) == {}


@hypothesis_settings(database=None, derandomize=True, max_examples=300)
@given(
    size=st.integers(min_value=0, max_value=64),
    wants=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=40), max_size=8),
)
def test_fair_shares_are_within_the_pool_and_every_want_and_fair_within_one(
    size: int, wants: dict[str, int]
) -> None:
    shares = fair_shares(size, wants)
    assert shares.keys() == wants.keys()
    assert all(0 <= shares[r] <= wants[r] for r in wants)
    assert sum(shares.values()) == min(size, sum(wants.values()))  # never above the pool, nothing left idle
    for short in (r for r in wants if shares[r] < wants[r]):
        # A replica that got less than it wants got at most one unit less than anybody else.
        assert all(shares[r] <= shares[short] + 1 for r in wants)


# --- a replica alone -------------------------------------------------------------------------------------------


async def test_shares_alone_own_every_unit_with_no_database() -> None:
    shares = Shares()
    pool = shares.pool("slot:fake:key-1", 3)
    assert shares.usable
    assert pool.held == {0, 1, 2}
    assert shares.pool("slot:fake:key-1", 99) is pool and pool.size == 3

    units = [pool.take_idle() for _ in range(3)]
    assert sorted(u for u in units if u is not None) == [0, 1, 2]
    assert pool.take_idle() is None
    assert pool.wants == 3 and pool.idle_units() == []
    pool.done(1)
    assert pool.idle_units() == [1] and pool.take_idle() == 1

    await shares.keep()
    await shares.release_all()
    assert pool.held == {0, 1, 2}  # nothing to trade or give back when alone
    stop = asyncio.Event()
    stop.set()
    await shares.run(stop)


# --- rate turns ------------------------------------------------------------------------------------------------


async def test_rate_turns_are_spaced_by_at_least_one_period() -> None:
    shares = Shares()
    turns = RateTurns(shares, shares.pool("submit:fake:key-1", PHASES, rate=True), 200.0)
    assert turns.period == pytest.approx(1.05 / 200.0)
    ended: list[float] = []

    async def one_turn() -> None:
        await turns.turn()
        ended.append(time.time())

    start = time.time()
    await asyncio.gather(*(one_turn() for _ in range(8)))

    # Turns are distinct multiples of the period, none before its time: however late any of them woke, the
    # i-th to end cannot end before i periods after the start. (A lower bound only; no upper bound is claimed.)
    ended.sort()
    for i, at in enumerate(ended):
        assert at >= start + i * turns.period - CLOCK_SLACK_S
    assert turns.pool.busy == {} and turns.pool.waiting == 0


async def test_rate_turns_use_only_the_phases_this_replica_holds() -> None:
    shares = Shares()
    pool = shares.pool("submit:fake:key-1", PHASES, rate=True)
    pool.held = {0, PHASES // 2}  # two of sixteen phases: every eighth turn
    turns = RateTurns(shares, pool, 1000.0)
    ended: list[float] = []

    start = time.time()
    for _ in range(4):
        await turns.turn()
        ended.append(time.time())

    for i, at in enumerate(ended):
        assert at >= start + i * (PHASES // 2) * turns.period - CLOCK_SLACK_S
    assert turns._next % (PHASES // 2) == 1  # the last turn had a held phase


# --- provider limits: slots ------------------------------------------------------------------------------------


async def test_provider_limits_hold_at_most_max_in_flight_slots_and_a_waiter_gets_a_returned_one() -> None:
    metrics = Metrics()
    limits = ProviderLimits(
        Shares(), "fake", [make_credential("key-1", max_in_flight=2)], 1000.0, metrics=metrics
    )
    gates = [asyncio.Event() for _ in range(3)]
    entered: list[int] = []
    inside = peak = 0

    async def worker(n: int) -> None:
        nonlocal inside, peak
        async with limits.slot() as cred:
            assert cred.name == "key-1"
            inside += 1
            peak = max(peak, inside)
            entered.append(n)
            await gates[n].wait()
            inside -= 1

    def in_use() -> float:
        labels = {"provider": "fake", "credential": "key-1"}
        return metrics.registry.get_sample_value("imaged_provider_slots_in_use", labels) or 0.0

    workers = [asyncio.create_task(worker(n)) for n in range(3)]
    await wait_until(lambda: len(entered) == 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(entered) == 2 and in_use() == 2
    waiter = next(n for n in range(3) if n not in entered)

    gates[entered[0]].set()
    # Returning a slot wakes the waiter at once (its own recheck would come only after a whole second).
    await wait_until(lambda: waiter in entered, within=0.5)
    assert peak == 2 and in_use() == 2

    for gate in gates:
        gate.set()
    await asyncio.gather(*workers)
    assert in_use() == 0 and limits.limits["key-1"].slots.busy == {}


async def test_provider_limits_never_exceed_the_slots_of_every_credential_together() -> None:
    creds = [make_credential("key-1", max_in_flight=2), make_credential("key-2", max_in_flight=1)]
    limits = ProviderLimits(Shares(), "fake", creds, 1000.0)
    assert limits.capacity == 3
    inside: dict[str, int] = {"key-1": 0, "key-2": 0}
    peak: dict[str, int] = {"key-1": 0, "key-2": 0}

    async def worker() -> None:
        async with limits.slot() as cred:
            inside[cred.name] += 1
            peak[cred.name] = max(peak[cred.name], inside[cred.name])
            for _ in range(3):
                await asyncio.sleep(0)
            inside[cred.name] -= 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(12))), 5)
    assert peak == {"key-1": 2, "key-2": 1}


def test_provider_limits_need_a_credential() -> None:
    with pytest.raises(ValueError, match="at least one credential"):
        ProviderLimits(Shares(), "fake", [], 1.0)


# --- provider limits: rotation ---------------------------------------------------------------------------------


async def test_slots_rotate_over_the_credentials_and_skip_one_taken_out() -> None:
    metrics = Metrics()
    k1, k2 = make_credential("key-1"), make_credential("key-2")
    limits = ProviderLimits(Shares(), "fake", [k1, k2], 1000.0, metrics=metrics)

    def up(name: str) -> float | None:
        return metrics.registry.get_sample_value(
            "imaged_credential_up", {"provider": "fake", "credential": name}
        )

    picked = []
    for _ in range(4):
        async with limits.slot() as cred:
            picked.append(cred.name)
    assert picked == ["key-1", "key-2", "key-1", "key-2"]
    assert (up("key-1"), up("key-2")) == (1.0, 1.0)

    limits.take_out(k1, auth_error())

    assert limits.active() == [k2]
    assert limits.status() == {"key-1": "out of rotation", "key-2": "active"}
    assert (up("key-1"), up("key-2")) == (0.0, 1.0)
    for _ in range(3):
        async with limits.slot() as cred:
            assert cred is k2
    # A task already at the provider keeps being polled with the credential that submitted it.
    async with limits.slot("key-1") as cred:
        assert cred is k1


async def test_a_credential_comes_back_after_its_cooldown() -> None:
    metrics = Metrics()
    k1, k2 = make_credential("key-1"), make_credential("key-2")
    limits = ProviderLimits(Shares(), "fake", [k1, k2], 1000.0, cooldown_s=0.05, metrics=metrics)
    limits.take_out(k1, quota_error())
    assert limits.active() == [k2]

    await asyncio.sleep(0.06)

    assert limits.active() == [k1, k2]
    assert limits.status() == {"key-1": "active", "key-2": "active"}
    labels = {"provider": "fake", "credential": "key-1"}
    assert metrics.registry.get_sample_value("imaged_credential_up", labels) == 1.0


async def test_a_slot_fails_when_every_credential_is_out_of_rotation() -> None:
    k1, k2 = make_credential("key-1"), make_credential("key-2")
    limits = ProviderLimits(Shares(), "fake", [k1, k2], 1000.0)
    limits.take_out(k1, auth_error())
    limits.take_out(k2, quota_error())
    assert limits.active() == []

    with pytest.raises(TaskError) as caught:
        async with limits.slot():
            pytest.fail("a slot was handed out with every credential out of rotation")

    assert caught.value.code == "no_credential"
    # The category is that of the credential that comes back first (key-1, taken out first).
    assert caught.value.category is ErrorCategory.AUTH
    assert "invalid api key" in caught.value.message
    assert limits.limits["key-1"].slots.busy == {} and limits.limits["key-2"].slots.busy == {}
