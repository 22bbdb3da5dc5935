"""Cancel requests, as every replica hears them: a broadcast on ``<prefix>.control`` and the stored flag.

Whoever cancels a task (HTTP, ``imaged cancel``) sets ``cancel_requested`` on it and then broadcasts the task
id. The replica driving the task wakes its job at once, without the job reading the database on every poll;
jobs read the flag when they start and, as a safety net for a broadcast missed during a reconnect, every
``RECHECK_S`` while they poll.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

RECHECK_S = 60.0
#: task ids remembered from broadcasts (for jobs that start after the broadcast arrived)
REMEMBERED = 100_000


class CancelBoard:
    """The cancel requests this replica heard, and the running jobs that want to know."""

    def __init__(self) -> None:
        self._heard: OrderedDict[str, float] = OrderedDict()
        self._watchers: dict[str, asyncio.Event] = {}

    def cancel(self, task_id: str) -> None:
        self._heard[task_id] = time.monotonic()
        self._heard.move_to_end(task_id)
        while len(self._heard) > REMEMBERED:
            self._heard.popitem(last=False)
        watcher = self._watchers.get(task_id)
        if watcher is not None:
            watcher.set()

    def requested(self, task_id: str) -> bool:
        return task_id in self._heard

    def watch(self, task_id: str) -> asyncio.Event:
        """An event set when a cancel of the task is heard (already set if one was)."""
        event = self._watchers.setdefault(task_id, asyncio.Event())
        if task_id in self._heard:
            event.set()
        return event

    def unwatch(self, task_id: str) -> None:
        self._watchers.pop(task_id, None)
