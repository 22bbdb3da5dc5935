"""The job state machine (imaged/job.py) against in-memory fakes: submit once, poll, download, record, announce."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect

from imaged import job as job_module
from imaged import retry
from imaged.claims import ClaimState
from imaged.contract import ErrorCategory, ErrorInfo, Status, utcnow
from imaged.errors import DownloadError, HandBack, ProviderError, TaskError
from imaged.providers.base import PollResult, ProviderState
from imaged.task import RESUME_SEQ_GAP, Task

from .fakes import (
    ME,
    OTHER,
    PRICE_PER_IMAGE,
    Harness,
    StoredClaim,
    build,
    image_url,
    make_credential,
    running,
    succeeded,
    wait_until,
)

pytestmark = pytest.mark.timeout(10)

SUBMITTING, CLAIMED, REFUSED = ClaimState.SUBMITTING, ClaimState.CLAIMED, ClaimState.REFUSED


@pytest.fixture(autouse=True)
def no_retry_waits() -> Iterator[None]:
    before = retry.testing()
    retry.set_testing(True)
    yield
    retry.set_testing(before)


@pytest.fixture
def h() -> Harness:
    return build()


@pytest.fixture
def quick_claim_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job waiting for another replica's claim looks again every few milliseconds instead of every second."""
    monkeypatch.setattr(job_module, "CLAIM_WAIT_S", 0.002)


def rate_limited() -> ProviderError:
    return ProviderError(
        "Throttling", code="rate_limited", category=ErrorCategory.RATE_LIMITED, retryable=True
    )


def no_answer() -> ProviderError:
    return ProviderError("submit: no answer within 30 s", code="timeout", retryable=True)


# --- the way through -------------------------------------------------------------------------------------------


async def test_a_pending_task_is_submitted_polled_downloaded_and_completed(h: Harness) -> None:
    h.add_task("t1")
    h.provider.submit_script.append("pt-1")
    h.provider.poll_script.extend([running(), succeeded(2, pointsCost=4)])

    assert await h.run("t1") is Status.COMPLETED

    assert h.sink.summary() == [("task.processing", 2), ("task.completed", 3)]
    processing, completed = h.sink.events
    assert [e["event_id"] for e in h.sink.events] == ["t1:2", "t1:3"]
    assert processing["status"] == "processing" and processing["progress"] == 0.0
    assert completed["status"] == "completed" and completed["progress"] == 1.0
    assert completed["correlation_id"] == "corr-t1" and completed["metadata"] == {"caller": "unit"}
    assert [reply_to for _, reply_to in h.sink.published] == ["caller.replies", "caller.replies"]
    result = completed["result"]
    assert result["id"] == "pt-1"
    assert result["model"] == "fake-t2i"
    assert result["prompt"] == "a red fox in the snow"
    assert [(i["index"], i["url"], i["seed"]) for i in result["images"]] == [
        (0, image_url(0), 1000),
        (1, image_url(1), 1001),
    ]
    assert [i["bytes"] for i in result["images"]] == [1000, 1001]
    assert (result["width"], result["height"]) == (64, 48)
    assert result["cost"] == pytest.approx(PRICE_PER_IMAGE * 2)
    assert result["usage"] == {"image_count": 2}
    assert result["pointsCost"] == 4
    assert completed["error"] is None

    stored = h.store.stored("t1")
    assert stored.status is Status.COMPLETED
    assert stored.provider_task_id == "pt-1" and stored.credential == "key-1"
    assert stored.seq == 3 and stored.attempts == 1 and stored.progress == 1.0
    assert stored.terminal_event == completed
    assert stored.result == result
    assert stored.submitted_at is not None and stored.finished_at is not None
    assert [entry["status"] for entry in stored.history] == ["pending", "processing", "completed"]

    assert h.provider.submits == [("key-1", {"prompt": "a red fox in the snow"})]
    assert h.provider.polls == [("key-1", "pt-1"), ("key-1", "pt-1")]
    # The claim is inserted (as "submitting") just before the submit and stays with the finished task.
    assert h.journal == [
        "store.get t1",
        "claims.insert t1 submitting",
        "provider.submit key-1",
        "store.save t1 processing",
        "events.publish task.processing 2",
        "provider.poll pt-1",
        "provider.poll pt-1",
        f"download {image_url(0)}",
        f"download {image_url(1)}",
        "store.save t1 completed",
        "events.publish task.completed 3",
    ]
    assert h.claims.claims == {"t1": StoredClaim(ME, SUBMITTING)}
    # One read when the job starts; two writes: the provider task id (with status processing) and the terminal
    # state with its event. Polls and progress write nothing.
    assert h.store.calls == Counter({"get": 1, "save": 2})
    assert (h.store.reads, h.store.writes) == (1, 2)

    assert h.sample("imaged_tasks_total", provider="fake", model="fake-t2i", status="completed") == 1
    assert h.sample("imaged_provider_requests_total", provider="fake", operation="submit", outcome="ok") == 1
    assert h.sample("imaged_download_bytes_total", provider="fake") == 2001
    assert h.sample("imaged_provider_slots_in_use", provider="fake", credential="key-1") == 0


async def test_a_first_delivery_starts_from_the_task_in_its_lane_message_without_reading_it(
    h: Harness,
) -> None:
    stored = h.add_task("t1")
    snapshot = Task.from_message(stored.to_message())
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1", snapshot=snapshot) is Status.COMPLETED

    assert h.store.calls == Counter({"save": 2})  # the provider task id, the terminal state: no read at all
    assert h.sink.summary() == [("task.processing", 2), ("task.completed", 3)]
    assert h.claims.claims == {"t1": StoredClaim(ME, SUBMITTING)}


@pytest.mark.parametrize("holder_alive", [True, False])
@pytest.mark.usefixtures("quick_claim_wait")
async def test_a_stale_copy_of_a_lane_message_never_runs_a_finished_task_again(
    h: Harness, holder_alive: bool
) -> None:
    stale = Task.from_message(h.add_task("t1").to_message())
    h.provider.poll_script.append(succeeded(1))
    assert await h.run("t1", snapshot=stale) is Status.COMPLETED
    finished = h.sink.events[-1]
    if not holder_alive:
        h.claims.hold_elsewhere("t1", OTHER, SUBMITTING, alive=False)  # finished by a replica since gone
    h.sink.published.clear()

    # The same lane message again, as a first delivery (e.g. a copy intake forwarded before it crashed).
    assert await h.run("t1", snapshot=stale) is Status.COMPLETED

    assert len(h.provider.submits) == 1
    assert h.sink.events == [finished]  # only the stored terminal event, once more
    assert h.store.stored("t1").status is Status.COMPLETED


async def test_a_retryable_submit_error_is_retried_until_one_submit_succeeds(h: Harness) -> None:
    h.add_task("t1")
    h.provider.submit_script.extend([rate_limited(), rate_limited(), "pt-3"])
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1") is Status.COMPLETED

    assert len(h.provider.submits) == 3
    assert h.provider.accepted == ["pt-3"]
    assert h.store.stored("t1").provider_task_id == "pt-3"
    assert h.sink.summary() == [("task.processing", 2), ("task.completed", 3)]
    # A definite "no" is recorded on the claim, and "submitting" again before the next try.
    assert [(m, s) for m, _, s in h.claims.calls if m in ("insert", "take", "mark")] == [
        ("insert", SUBMITTING),
        ("mark", REFUSED),
        ("mark", SUBMITTING),
        ("mark", REFUSED),
        ("mark", SUBMITTING),
    ]
    labels = {"provider": "fake", "operation": "submit"}
    assert h.sample("imaged_provider_requests_total", **labels, outcome="rate_limited") == 2
    assert h.sample("imaged_provider_requests_total", **labels, outcome="ok") == 1
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy="resubmit") == 0


@pytest.mark.parametrize(
    ("category", "code"),
    [
        (ErrorCategory.INVALID_REQUEST, "InvalidParameter"),
        (ErrorCategory.CONTENT_POLICY, "DataInspectionFailed"),
        (ErrorCategory.PROVIDER_ERROR, "UnknownFailure"),
    ],
)
async def test_a_non_retryable_submit_error_fails_the_task_after_one_submit(
    h: Harness, category: ErrorCategory, code: str
) -> None:
    h.add_task("t1")
    h.provider.submit_script.append(ProviderError("refused", code=code, category=category))

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1 and h.provider.polls == []
    assert h.sink.summary() == [("task.failed", 2)]
    error = h.sink.events[0]["error"]
    assert (error["category"], error["code"], error["retryable"]) == (category.value, code, False)
    stored = h.store.stored("t1")
    assert stored.status is Status.FAILED and stored.error == error and stored.provider_task_id is None
    assert stored.terminal_event == h.sink.events[0]
    assert h.claims.claims == {"t1": StoredClaim(ME, REFUSED)}  # it stays with the task
    assert h.sample("imaged_task_errors_total", provider="fake", category=category.value) == 1


async def test_content_policy_reported_by_a_poll_fails_the_task_without_a_second_submit(h: Harness) -> None:
    h.add_task("t1")
    blocked = ErrorInfo(category=ErrorCategory.CONTENT_POLICY, code="DataInspectionFailed", message="blocked")
    h.provider.poll_script.extend([running(), PollResult(ProviderState.FAILED, error=blocked)])

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1 and len(h.provider.polls) == 2
    assert h.sink.summary() == [("task.processing", 2), ("task.failed", 3)]
    assert h.sink.events[-1]["error"] == blocked.model_dump(mode="json")
    assert h.store.stored("t1").provider_task_id == "pt-1"


async def test_a_provider_failure_without_details_fails_with_provider_error(h: Harness) -> None:
    h.add_task("t1")
    h.provider.poll_script.append(PollResult(ProviderState.FAILED))

    assert await h.run("t1") is Status.FAILED

    error = h.sink.events[-1]["error"]
    assert (error["category"], error["code"]) == ("provider_error", "failed")


async def test_an_ambiguous_submit_is_submitted_again_and_counted_under_the_resubmit_policy() -> None:
    h = build(submit_unknown_policy="resubmit")
    h.add_task("t1")
    h.provider.submit_script.extend([no_answer(), "pt-2"])
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1") is Status.COMPLETED

    assert len(h.provider.submits) == 2 and h.provider.accepted == ["pt-2"]
    assert h.store.stored("t1").provider_task_id == "pt-2"
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy="resubmit") == 1
    # The claim stays "submitting" after a submit that may have reached the provider.
    assert REFUSED not in [state for _, _, state in h.claims.calls]


async def test_an_ambiguous_submit_fails_the_task_under_the_fail_policy() -> None:
    h = build(submit_unknown_policy="fail")
    h.add_task("t1")
    h.provider.submit_script.extend([no_answer(), "pt-2"])

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1 and h.provider.accepted == []
    error = h.sink.events[-1]["error"]
    assert error["category"] == "submit_unknown"
    stored = h.store.stored("t1")
    assert stored.status is Status.FAILED and stored.provider_task_id is None
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy="fail") == 1


async def test_the_provider_task_id_is_recorded_through_a_database_outage(h: Harness) -> None:
    h.add_task("t1")
    h.store.save_failures.append(AutoReconnect("connection reset"))
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1") is Status.COMPLETED

    assert len(h.provider.submits) == 1
    assert h.store.calls["save"] == 3  # the failed save, its retry, the terminal state
    assert h.store.stored("t1").provider_task_id == "pt-1"
    assert h.sink.summary() == [("task.processing", 2), ("task.completed", 3)]


# --- resuming and re-publishing ------------------------------------------------------------------------------


@pytest.mark.parametrize("resumed", [True, False])
async def test_a_resumed_task_is_polled_never_submitted_and_its_seq_skips_the_gap(
    h: Harness, resumed: bool
) -> None:
    now = utcnow()
    h.add_task(
        "t1",
        status=Status.PROCESSING,
        provider_task_id="pt-9",
        credential="key-1",
        submitted_at=now,
        attempts=1,
        seq=2,
        history=[{"status": "pending", "at": now}, {"status": "processing", "at": now}],
    )
    h.provider.poll_script.extend([running(0.5), succeeded(1)])

    assert await h.run("t1", resumed=resumed) is Status.COMPLETED

    assert h.provider.submits == []
    assert h.provider.polls == [("key-1", "pt-9"), ("key-1", "pt-9")]
    first = 2 + RESUME_SEQ_GAP + 1
    assert h.sink.summary() == [("task.progress", first), ("task.completed", first + 1)]
    assert h.sink.events[-1]["result"]["id"] == "pt-9"
    stored = h.store.stored("t1")
    assert stored.status is Status.COMPLETED and stored.seq == first + 1
    assert [(m, s) for m, _, s in h.claims.calls] == [("take", CLAIMED)]
    # Reads: the start and the re-read after the claim; writes: the bumped seq and the terminal state.
    assert h.store.calls == Counter({"get": 2, "save": 2})


async def test_a_resumed_task_whose_submit_was_refused_is_submitted_without_counting_it_unknown(
    h: Harness,
) -> None:
    h.add_task("t1")
    h.claims.hold_elsewhere("t1", OTHER, REFUSED, alive=False)
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1", resumed=True) is Status.COMPLETED

    assert len(h.provider.submits) == 1
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy="resubmit") == 0
    assert h.sink.summary() == [("task.processing", 1 + RESUME_SEQ_GAP + 1), ("task.completed", 103)]


@pytest.mark.parametrize("resumed", [True, False])
async def test_a_terminal_task_republishes_its_stored_event_without_calling_the_provider(
    h: Harness, resumed: bool
) -> None:
    h.add_task("t1")
    h.provider.poll_script.append(succeeded(1))
    assert await h.run("t1") is Status.COMPLETED
    original = h.sink.events[-1]
    submits, polls = len(h.provider.submits), len(h.provider.polls)
    h.sink.published.clear()
    h.store.calls.clear()
    h.claims.calls.clear()

    assert await h.run("t1", resumed=resumed) is Status.COMPLETED

    assert h.sink.published == [(original, "caller.replies")]
    assert h.sink.events[0]["event_id"] == "t1:3"
    assert (len(h.provider.submits), len(h.provider.polls)) == (submits, polls)
    assert h.store.calls == Counter({"get": 1})
    assert h.claims.calls == []


async def test_a_terminal_task_without_a_stored_event_gets_one_stored_before_it_is_published(
    h: Harness,
) -> None:
    error = ErrorInfo(category=ErrorCategory.INVALID_REQUEST, code="bad", message="bad request")
    h.add_task("t1", status=Status.FAILED, error=error.model_dump(mode="json"), finished_at=utcnow())

    assert await h.run("t1") is Status.FAILED

    assert h.sink.summary() == [("task.failed", 2)]
    assert h.sink.events[0]["error"] == error.model_dump(mode="json")
    assert h.store.stored("t1").terminal_event == h.sink.events[0]
    assert h.provider.submits == []


# --- cancels and deadlines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stored flag", "broadcast heard before the job"])
async def test_a_task_canceled_before_its_submit_is_never_submitted(h: Harness, how: str) -> None:
    if how == "stored flag":
        h.add_task("t1", cancel_requested=True)
    else:
        h.add_task("t1")
        h.cancels.cancel("t1")

    assert await h.run("t1") is Status.CANCELED

    assert h.provider.submits == []
    assert h.sink.summary() == [("task.canceled", 2)]
    assert h.sink.events[0]["error"]["category"] == "canceled"
    assert h.store.stored("t1").status is Status.CANCELED
    assert h.claims.calls == [("insert", "t1", CLAIMED)]  # claimed to write the outcome, never "submitting"
    assert h.provider_requests("submit") == 0


async def test_a_cancel_heard_while_polling_cancels_at_the_provider(h: Harness) -> None:
    h.add_task("t1")
    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: len(h.provider.polls) >= 2)
    assert not job.done()

    h.cancels.cancel("t1")

    assert await job is Status.CANCELED
    assert h.provider.cancels == [("key-1", "pt-1")]
    assert len(h.provider.submits) == 1
    assert h.sink.summary() == [("task.processing", 2), ("task.canceled", 3)]
    stored = h.store.stored("t1")
    assert stored.status is Status.CANCELED and stored.provider_task_id == "pt-1"
    assert h.claims.claims == {"t1": StoredClaim(ME, SUBMITTING)}


async def test_a_cancel_heard_during_the_submit_keeps_the_provider_task_id_and_cancels_there(
    h: Harness,
) -> None:
    h.add_task("t1")
    job = h.job("t1")
    inside_submit: list[bool] = []

    def cancel_now(number: int) -> None:
        inside_submit.append(job.outside_submit.is_set())
        h.cancels.cancel("t1")

    h.provider.on_submit = cancel_now

    async with asyncio.timeout(5):
        assert await job.run() is Status.CANCELED

    assert inside_submit == [False]  # shutdown must not interrupt the job inside this window
    assert job.outside_submit.is_set()
    assert len(h.provider.submits) == 1
    assert h.store.stored("t1").provider_task_id == "pt-1"  # recorded before anything else
    assert h.provider.cancels == [("key-1", "pt-1")]
    assert h.sink.summary() == [("task.processing", 2), ("task.canceled", 3)]


async def test_a_stored_cancel_flag_is_noticed_while_polling_without_a_broadcast(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "RECHECK_S", 0.0)  # re-read the flag on every poll
    h.add_task("t1")
    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: len(h.provider.polls) >= 2)

    await h.store.request_cancel("t1")  # the broadcast was missed

    assert await job is Status.CANCELED
    assert h.provider.cancels == [("key-1", "pt-1")]


async def test_a_task_past_its_deadline_fails_with_timeout_without_a_submit(h: Harness) -> None:
    h.add_task("t1", deadline=utcnow() - timedelta(seconds=1))

    assert await h.run("t1") is Status.FAILED

    assert h.provider.submits == []
    error = h.sink.events[-1]["error"]
    assert (error["category"], error["code"]) == ("timeout", "deadline")
    assert h.claims.calls == [("insert", "t1", CLAIMED)]  # claimed to write the outcome


async def test_a_deadline_passing_while_polling_fails_the_task_with_timeout(h: Harness) -> None:
    h.add_task("t1", deadline=utcnow() + timedelta(milliseconds=100))

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1 and h.provider.polls
    error = h.sink.events[-1]["error"]
    assert (error["category"], error["code"]) == ("timeout", "deadline")


# --- credentials -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "code"), [(ErrorCategory.AUTH, "InvalidApiKey"), (ErrorCategory.QUOTA, "Arrearage")]
)
async def test_a_credential_error_rotates_to_the_next_credential(category: ErrorCategory, code: str) -> None:
    h = build(credentials=[make_credential("key-1"), make_credential("key-2")])
    h.add_task("t1")
    h.provider.submit_script.extend([ProviderError("key refused", code=code, category=category), "pt-2"])
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1") is Status.COMPLETED

    assert [cred for cred, _ in h.provider.submits] == ["key-1", "key-2"]
    assert {cred for cred, _ in h.provider.polls} == {"key-2"}
    stored = h.store.stored("t1")
    assert stored.credential == "key-2" and stored.provider_task_id == "pt-2"
    assert h.limits.status() == {"key-1": "out of rotation", "key-2": "active"}
    assert h.sample("imaged_credential_up", provider="fake", credential="key-1") == 0
    assert h.sample("imaged_credential_up", provider="fake", credential="key-2") == 1


async def test_an_auth_error_on_the_only_credential_fails_the_task() -> None:
    h = build(credentials=[make_credential("key-1")])
    h.add_task("t1")
    h.provider.submit_script.append(
        ProviderError("key refused", code="InvalidApiKey", category=ErrorCategory.AUTH)
    )

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1
    error = h.sink.events[-1]["error"]
    assert (error["category"], error["code"]) == ("auth", "InvalidApiKey")
    assert h.limits.status() == {"key-1": "out of rotation"}


async def test_a_task_fails_without_a_submit_while_every_credential_is_out_of_rotation(h: Harness) -> None:
    h.add_task("t1")
    h.add_task("t2")
    h.provider.submit_script.append(
        ProviderError("key refused", code="InvalidApiKey", category=ErrorCategory.AUTH)
    )
    assert await h.run("t1") is Status.FAILED

    assert await h.run("t2") is Status.FAILED

    assert len(h.provider.submits) == 1
    error = h.sink.events[-1]["error"]
    assert h.sink.events[-1]["task_id"] == "t2"
    assert (error["category"], error["code"]) == ("auth", "no_credential")


# --- shutdown and other replicas -------------------------------------------------------------------------------


async def test_draining_before_the_submit_hands_a_fresh_task_back_unsubmitted(h: Harness) -> None:
    h.add_task("t1")
    h.deps.draining.set()

    with pytest.raises(HandBack):
        await h.run("t1")

    assert h.provider.submits == [] and h.sink.events == []
    assert h.claims.claims == {}  # a first delivery claims only just before the submit
    assert h.store.stored("t1").status is Status.PENDING


async def test_draining_before_the_submit_hands_a_resumed_task_and_its_claim_back(h: Harness) -> None:
    h.add_task("t1")
    h.deps.draining.set()

    with pytest.raises(HandBack):
        await h.run("t1", resumed=True)

    assert h.provider.submits == [] and h.sink.events == []
    assert h.claims.calls == [("take", "t1", CLAIMED), ("hand_back", "t1", None)]
    assert h.claims.claims == {"t1": StoredClaim("", CLAIMED)}
    assert h.store.stored("t1").status is Status.PENDING


@pytest.mark.usefixtures("quick_claim_wait")
async def test_a_claim_held_by_a_live_replica_blocks_the_submit_until_it_is_handed_back(h: Harness) -> None:
    h.add_task("t1")
    h.claims.hold_elsewhere("t1", OTHER, CLAIMED)
    h.provider.poll_script.append(succeeded(1))

    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: h.claims.takes("t1") >= 5)
    assert h.provider.submits == [] and not job.done()

    h.claims.claims["t1"].holder = ""  # the other replica hands it back

    assert await job is Status.COMPLETED
    assert len(h.provider.submits) == 1
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy="resubmit") == 0
    # Having waited, the job resumed: its events skip the gap.
    assert h.sink.summary() == [("task.processing", 1 + RESUME_SEQ_GAP + 1), ("task.completed", 103)]
    assert h.claims.claims == {"t1": StoredClaim(ME, SUBMITTING)}


@pytest.mark.usefixtures("quick_claim_wait")
async def test_a_job_waiting_for_another_replicas_claim_hands_back_when_draining(h: Harness) -> None:
    h.add_task("t1")
    h.claims.hold_elsewhere("t1", OTHER, SUBMITTING)

    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: h.claims.takes("t1") >= 3)
    h.deps.draining.set()

    with pytest.raises(HandBack):
        await job
    assert h.provider.submits == []
    assert h.claims.claims == {"t1": StoredClaim(OTHER, SUBMITTING)}
    assert ("hand_back", "t1", None) not in h.claims.calls


@pytest.mark.usefixtures("quick_claim_wait")
async def test_a_job_waiting_for_another_replica_republishes_when_that_replica_finishes(h: Harness) -> None:
    h.add_task("t1")
    h.claims.hold_elsewhere("t1", OTHER, SUBMITTING)

    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: h.claims.takes("t1") >= 2)
    # The other replica finishes: terminal state and event stored (and published), claim removed.
    canceled = ErrorInfo(category=ErrorCategory.CANCELED, code="canceled", message="the task was canceled")
    await h.deps.events.finish(h.store.stored("t1"), Status.CANCELED, error=canceled)
    del h.claims.claims["t1"]

    assert await job is Status.CANCELED
    assert h.provider.submits == []
    assert h.sink.summary() == [("task.canceled", 2), ("task.canceled", 2)]
    assert h.sink.events[0] == h.sink.events[1]  # the very same event, once more
    assert h.claims.claims == {}  # removed by the other replica in this test


@pytest.mark.parametrize(
    ("policy", "outcome", "submits"), [("resubmit", Status.COMPLETED, 1), ("fail", Status.FAILED, 0)]
)
async def test_a_claim_taken_over_from_a_gone_replica_mid_submit_is_a_submit_unknown(
    policy: str, outcome: Status, submits: int
) -> None:
    h = build(submit_unknown_policy=policy)
    h.add_task("t1")
    h.claims.hold_elsewhere("t1", OTHER, SUBMITTING, alive=False)
    h.provider.poll_script.append(succeeded(1))

    assert await h.run("t1", resumed=True) is outcome

    assert len(h.provider.submits) == submits
    assert h.sample("imaged_submit_unknown_total", provider="fake", policy=policy) == 1
    if outcome is Status.FAILED:
        assert h.sink.events[-1]["error"]["category"] == "submit_unknown"


@pytest.mark.parametrize(
    "taken_as",
    [CLAIMED, SUBMITTING],
    ids=["taken over to write an outcome", "taken over to submit itself"],
)
async def test_a_claim_lost_between_two_submits_hands_the_task_back_and_leaves_the_new_holder_alone(
    h: Harness, taken_as: ClaimState
) -> None:
    h.add_task("t1")
    h.provider.submit_script.append(rate_limited())

    def lose_the_claim(number: int) -> None:
        # While the first submit is out, this replica's registration lapses and another replica takes the claim
        # over. (Once a bug: the job changed the claim of a new holder that was submitting itself.)
        h.claims.claims["t1"] = StoredClaim(OTHER, taken_as)

    h.provider.on_submit = lose_the_claim

    with pytest.raises(HandBack):
        await h.run("t1")

    assert len(h.provider.submits) == 1  # the retry checked the claim first
    assert h.claims.claims["t1"] == StoredClaim(OTHER, taken_as)  # the new holder's claim, as it left it
    assert ("hand_back", "t1", None) not in h.claims.calls
    assert h.sink.events == []


# --- progress and downloads ------------------------------------------------------------------------------------


async def test_progress_polls_become_progress_events_with_increasing_seq(h: Harness) -> None:
    h.add_task("t1")
    h.provider.poll_script.extend(
        [
            PollResult(ProviderState.QUEUED),
            running(0.0),
            running(0.25),
            running(0.25),
            running(None),
            running(0.6),
            running(0.5),
            running(1.0),
            running(0.9),
            succeeded(1),
        ]
    )

    assert await h.run("t1") is Status.COMPLETED

    progress = [e for e in h.sink.events if e["type"] == "task.progress"]
    assert [e["progress"] for e in progress] == [0.25, 0.6, 0.9]
    assert all(0.0 < e["progress"] < 1.0 and e["status"] == "processing" for e in progress)
    assert h.sink.summary() == [
        ("task.processing", 2),
        ("task.progress", 3),
        ("task.progress", 4),
        ("task.progress", 5),
        ("task.completed", 6),
    ]
    assert [e["event_id"] for e in h.sink.events] == [f"t1:{n}" for n in range(2, 7)]
    assert h.store.calls["save"] == 2  # progress is stored at most every few seconds
    assert h.store.stored("t1").seq == 6


async def test_progress_is_stored_with_its_seq_when_the_store_interval_has_passed(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "PROGRESS_STORE_S", 0.0)
    h.add_task("t1")
    h.provider.poll_script.extend([running(0.3), running(0.7)])
    job = asyncio.create_task(h.run("t1"))
    await wait_until(lambda: len(h.provider.polls) >= 3)

    stored = h.store.stored("t1")
    assert (stored.progress, stored.seq) == (0.7, 4)  # task.progress events 3 and 4
    h.cancels.cancel("t1")
    assert await job is Status.CANCELED
    assert h.sink.summary()[-1] == ("task.canceled", 5)


async def test_a_retryable_poll_error_is_retried(h: Harness) -> None:
    h.add_task("t1")
    h.provider.poll_script.extend([rate_limited(), ProviderError("busy", retryable=True), succeeded(1)])

    assert await h.run("t1") is Status.COMPLETED

    assert len(h.provider.polls) == 3 and len(h.provider.submits) == 1


async def test_an_image_that_cannot_be_downloaded_is_listed_as_failed(h: Harness) -> None:
    h.add_task("t1")
    h.provider.poll_script.append(succeeded(3))
    h.downloader.fail(image_url(1), DownloadError("gone", code="http_404", provider_status=404))
    h.downloader.fail(image_url(2), DownloadError("reset", code="connection_error", retryable=True), times=2)

    assert await h.run("t1") is Status.COMPLETED

    result = h.sink.events[-1]["result"]
    assert [i["index"] for i in result["images"]] == [0, 2]
    assert result["failed_images"] == [{"index": 1, "code": "http_404", "message": "gone"}]
    assert result["cost"] == pytest.approx(PRICE_PER_IMAGE * 2)
    assert h.downloader.calls.count(image_url(1)) == 1  # not retryable: tried once
    assert h.downloader.calls.count(image_url(2)) == 3  # retryable: twice more


async def test_no_more_images_are_kept_and_billed_than_the_task_asked_for(h: Harness) -> None:
    h.add_task("t1", parameters={"prompt": "a fox", "n": 1})
    h.provider.poll_script.append(succeeded(40))

    assert await h.run("t1") is Status.COMPLETED

    assert h.downloader.calls == [image_url(0)]
    result = h.sink.events[-1]["result"]
    assert [image["index"] for image in result["images"]] == [0]
    assert result["cost"] == pytest.approx(PRICE_PER_IMAGE)


async def test_a_task_whose_every_image_fails_to_download_fails(h: Harness) -> None:
    h.add_task("t1")
    h.provider.poll_script.append(succeeded(1))
    h.downloader.fail(image_url(0), DownloadError("gone", code="http_404"))

    assert await h.run("t1") is Status.FAILED

    error = h.sink.events[-1]["error"]
    assert (error["category"], error["code"]) == ("download_failed", "no_images")
    assert len(h.provider.submits) == 1
    assert h.claims.claims == {"t1": StoredClaim(ME, SUBMITTING)}


async def test_a_model_that_left_the_catalog_fails_the_task(h: Harness) -> None:
    h.add_task("t1", model="retired-model")

    assert await h.run("t1") is Status.FAILED

    assert h.provider.submits == []
    error = h.sink.events[-1]["error"]
    assert error["category"] == "invalid_request"


async def test_an_unknown_task_raises_without_touching_anything(h: Harness) -> None:
    with pytest.raises(TaskError, match="not in the store") as caught:
        await h.run("missing")
    assert caught.value.code == "unknown_task"
    assert h.sink.events == [] and h.claims.calls == [] and h.provider.submits == []


async def test_the_fake_claims_follow_the_documented_semantics(h: Harness) -> None:
    c = h.claims
    assert (await c.take("a", SUBMITTING)).taken
    assert await c.still_held("a")
    again = await c.take("a", CLAIMED)
    assert again.taken and again.previous is SUBMITTING  # re-entrant, learns its own state
    assert not (await c.take("a", CLAIMED, reentrant=False)).taken
    await c.hand_back("a")
    assert c.claims["a"] == StoredClaim("", SUBMITTING) and not await c.still_held("a")
    taken = await c.take("a", CLAIMED)
    assert taken.taken and taken.previous is SUBMITTING
    assert not await c.insert("a", SUBMITTING)  # a claim exists (whoever holds it): not new
    assert await c.insert("new", SUBMITTING) and c.claims["new"] == StoredClaim(ME, SUBMITTING)
    c.hold_elsewhere("b", OTHER, REFUSED)
    held = await c.take("b", SUBMITTING)
    assert (held.taken, held.holder, held.previous) == (False, OTHER, REFUSED)
    await c.hand_back("b")  # not ours: nothing happens
    assert c.claims["b"].holder == OTHER
    c.live.discard(OTHER)
    over = await c.take("b", CLAIMED)
    assert over.taken and over.previous is REFUSED and c.claims["b"] == StoredClaim(ME, CLAIMED)


# --- once bugs: counted requests that never happened -----------------------------------------------------------


async def test_provider_requests_count_only_calls_that_reached_the_provider() -> None:
    h = build(submit_unknown_policy="fail")
    h.add_task("t1")
    h.provider.submit_script.append(no_answer())

    assert await h.run("t1") is Status.FAILED

    assert len(h.provider.submits) == 1
    assert h.provider_requests("submit") == len(h.provider.submits)
