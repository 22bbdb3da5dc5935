"""What happens to a delivery, decided in one place (as aio-pika's ``message.process()`` does for one message).

Every consumer of imaged (intake, the provider lanes, the dead-letter watcher) is a handler that returns or
raises; :func:`process` runs it and settles its message(s) by this table:

| the handler...                        | the message is                                                  |
|---------------------------------------|-----------------------------------------------------------------|
| returns                               | acked                                                           |
| raises :class:`DeadLetter`            | copied to the dead-letter exchange with the reason, then acked  |
| raises :class:`HandBack`              | requeued, for this or another replica                           |
| raises an outage (broker, database)   | held, and the handler runs again once it is over (with backoff) |
| raises anything else (a bug, a poison)| requeued after a pause; on its last allowed delivery the policy |
|                                       | gives up on it (e.g. fails its task and dead-letters it)        |

Cancellation (shutdown) settles nothing: an unacked message goes back to the queue by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from . import retry
from .broker import Broker, settle
from .errors import HandBack, ImagedError
from .metrics import Metrics
from .outage import is_outage, wait_out

log = logging.getLogger(__name__)

Handler = Callable[[bool], Awaitable[None]]
"""Runs the work of a delivery; its argument says whether this is a run after an outage."""
GiveUp = Callable[[Sequence[AbstractIncomingMessage], BaseException], Awaitable[None]]


class DeadLetter(ImagedError):
    """The message cannot be processed, ever: copy it to the dead letters with this reason, then ack it."""

    def __init__(self, reason: str, error: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class Action(StrEnum):
    ACK = "ack"
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"
    WAIT = "wait"
    CRASH = "crash"


#: the table: the first predicate that matches the handler's exception decides
ACTIONS: tuple[tuple[Callable[[BaseException], bool], Action], ...] = (
    (lambda exc: isinstance(exc, DeadLetter), Action.DEAD_LETTER),
    (lambda exc: isinstance(exc, HandBack), Action.REQUEUE),
    (is_outage, Action.WAIT),
    (lambda exc: True, Action.CRASH),
)


def action_for(exc: BaseException) -> Action:
    return next(action for matches, action in ACTIONS if matches(exc))


@dataclass(frozen=True)
class DeliveryPolicy:
    """How one consumer treats a message whose handler keeps crashing."""

    queue: str
    #: deliveries after which the policy gives up on a crashing message; None leaves it to the broker's own
    #: ``x-delivery-limit`` (which dead-letters it)
    delivery_limit: int | None = None
    #: called on the last allowed delivery; the default dead-letters the message as "crashed"
    give_up: GiveUp | None = None


def deliveries(message: AbstractIncomingMessage) -> int:
    """How often the broker has delivered this message, this time included (quorum queues count)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return (count if isinstance(count, int) else 0) + 1


async def process(
    messages: Sequence[AbstractIncomingMessage],
    handler: Handler,
    policy: DeliveryPolicy,
    broker: Broker,
    metrics: Metrics,
) -> Action:
    """Run ``handler`` for a delivery (several deliveries of the same work settle together)."""
    outages = 0
    while True:
        try:
            await handler(outages > 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted by the table
            action = action_for(exc)
            if action is Action.WAIT:
                log.warning(
                    "%s: waiting for the broker/database (%s: %s)", policy.queue, type(exc).__name__, exc
                )
                await wait_out(outages, exc)
                outages += 1
                continue
            return await _settle(messages, action, exc, policy, broker, metrics)
        await _settle_all(messages, ack=True)
        return Action.ACK


async def _settle(
    messages: Sequence[AbstractIncomingMessage],
    action: Action,
    exc: BaseException,
    policy: DeliveryPolicy,
    broker: Broker,
    metrics: Metrics,
) -> Action:
    last = messages[-1]
    if action is Action.REQUEUE:
        log.info("%s: handing the message back: %s", policy.queue, exc)
        await _settle_all(messages, ack=False)
        return action
    if action is Action.DEAD_LETTER:
        assert isinstance(exc, DeadLetter)
        try:
            await broker.dead_letter(last, exc.reason, exc.error)
        except Exception as publish_error:
            if not is_outage(publish_error):
                raise
            await _settle_all(messages, ack=False)  # redelivered, and decided again
            return Action.REQUEUE
        metrics.dead_letters.labels(
            exc.reason if exc.reason in ("invalid_request", "crashed") else "rejected"
        ).inc()
        await _settle_all(messages, ack=True)
        return action
    # A crash: a bug, or a message that makes imaged fail.
    count = deliveries(last)
    if policy.delivery_limit is None or count < policy.delivery_limit:
        log.exception(
            "%s: failed on a message (delivery %d); it goes back to the queue",
            policy.queue,
            count,
            exc_info=exc,
        )
        await retry.CRASHED.wait(count)  # no hot loop through the delivery limit
        await _settle_all(messages, ack=False)
        return Action.REQUEUE
    log.exception(
        "%s: failed on a message on its last allowed delivery; giving up on it", policy.queue, exc_info=exc
    )
    try:
        if policy.give_up is not None:
            await policy.give_up(messages, exc)
        else:
            await broker.dead_letter(
                last, "crashed", {"message": f"imaged failed on this message: {type(exc).__name__}"}
            )
    except Exception:
        log.exception("%s: could not give up on the message cleanly; requeueing it", policy.queue)
        await _settle_all(messages, ack=False)
        return Action.REQUEUE
    metrics.dead_letters.labels("crashed").inc()
    await _settle_all(messages, ack=True)
    return Action.DEAD_LETTER


async def _settle_all(messages: Sequence[AbstractIncomingMessage], *, ack: bool) -> None:
    """Settle every delivery, including duplicates that arrive while settling (the list may grow)."""
    done = 0
    while done < len(messages):
        await settle(messages[done], ack=ack)
        done += 1
