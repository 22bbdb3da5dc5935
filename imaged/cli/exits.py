"""The exit codes of ``imaged``, defined once: scripts, the README and the tests rely on them.

Commands return one of these; ``imaged check`` exits with the code of its first failing check, and ``imaged run``
ends a start that cannot reach the broker or the database with the code ``imaged check`` gives that failure.
"""

from __future__ import annotations

EXIT_OK = 0  # done; the task completed
EXIT_FAILED = (
    1  # the task failed or was canceled; a replay skipped dead letters; the daemon stopped on an error
)
EXIT_NOT_FINISHED = (
    2  # the task has not finished yet (also `submit --wait` giving up; click's usage errors are 2)
)
EXIT_CONFIG = 3  # the settings (or the catalog, or an argument such as a tenant name) are invalid
EXIT_NOT_FOUND = 4  # no such task, API key or dead letter
EXIT_CONFLICT = 5  # the task has finished already: nothing to cancel
EXIT_UNAVAILABLE = 6  # the database or the broker could not be reached
EXIT_CHECK_CATALOG = 10  # check: the model catalog cannot be loaded
EXIT_CHECK_AUTH = 11  # check: authentication is misconfigured (or open on a non-loopback address)
EXIT_CHECK_BROKER = 12  # check, and run at start: the broker cannot be used
EXIT_CHECK_DATABASE = 13  # check, and run at start: the database cannot be used
EXIT_CHECK_IMAGES = 14  # check: the image store (directory or bucket) cannot be written
EXIT_CHECK_PROVIDER_KEYS = 15  # check: a provider of the catalog has no credentials (or is not installed)

#: ``imaged run``: the service a :class:`imaged.diagnose.StartupError` names -> the matching check's code
STARTUP_EXIT_CODES = {"broker": EXIT_CHECK_BROKER, "database": EXIT_CHECK_DATABASE}
