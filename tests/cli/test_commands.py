"""`imaged status|result|tasks|cancel|models|dead|keys` against a live daemon, MongoDB and RabbitMQ."""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from imaged.auth import ApiKeys, Authenticator, AuthError
from imaged.cli.exits import EXIT_CONFLICT, EXIT_NOT_FINISHED, EXIT_NOT_FOUND
from imaged.daemon import Daemon
from imaged.simulator import Simulator

from ..support import Bus, seed_body
from .conftest import Cli

pytestmark = pytest.mark.timeout(120)


async def test_task_commands(daemon: Daemon, bus: Bus, cli: Cli) -> None:
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("star-3-alpha-t2i"), message_id=task_id, user_id="guest")
    await bus.wait_terminal([task_id], within=30)

    run = await cli("status", task_id, "--json")
    assert run.code == 0, run.err
    status = run.json()
    assert status["task_id"] == task_id and status["status"] == "completed" and status["owner"] == "guest"
    run = await cli("status", task_id)
    assert run.code == 0 and f"task_id           {task_id}" in run.out

    run = await cli("result", task_id, "--json")
    assert run.code == 0
    result = run.json()
    assert set(result) == {"task_id", "status", "result", "error"}
    local_path = result["result"]["images"][0]["local_path"]
    run = await cli("result", task_id)
    assert run.code == 0 and local_path in run.out and "(768x1024," in run.out

    run = await cli("tasks", "--json", "--status", "completed", "--limit", "5")
    listing = run.json()
    assert listing["total"] == 1 and [t["task_id"] for t in listing["tasks"]] == [task_id]
    run = await cli("tasks", "--owner", "someone-else")
    assert run.code == 0 and "no tasks" in run.out
    run = await cli("tasks")
    assert run.out.splitlines()[0].split() == [
        "TASK",
        "STATUS",
        "MODEL",
        "PROVIDER",
        "OWNER",
        "PROGRESS",
        "CREATED",
    ]
    assert task_id in run.out

    run = await cli("cancel", task_id)
    assert run.code == EXIT_CONFLICT and "already completed" in run.err
    for command in ("status", "result", "cancel"):
        run = await cli(command, "no-such-task")
        assert run.code == EXIT_NOT_FOUND and "no task no-such-task" in run.err

    run = await cli("models", "--json")
    models = {m["name"]: m for m in run.json()}
    assert models["wanx2.1-t2i-turbo"]["provider"] == "aliyun" and models["wanx2.1-t2i-turbo"]["configured"]
    run = await cli("models")
    assert run.code == 0 and "star-3-alpha-t2i" in run.out and "MODEL" in run.out


async def test_cancel_from_the_command_line(daemon: Daemon, bus: Bus, cli: Cli, simulator: Simulator) -> None:
    simulator.config.task_seconds = 60.0
    task_id = secrets.token_hex(12)
    await bus.publish(seed_body("wanx2.1-t2i-turbo"), message_id=task_id)
    await bus.wait_events(2, within=20)  # pending, processing
    run = await cli("result", task_id)
    assert run.code == EXIT_NOT_FINISHED
    run = await cli("cancel", task_id)
    assert run.code == 0, run.err
    terminal = await bus.wait_terminal([task_id], within=20)
    assert terminal[task_id]["status"] == "canceled"
    run = await cli("result", task_id)
    assert run.code == 1 and "canceled" in run.out


async def test_dead_letters_list_and_replay(daemon: Daemon, bus: Bus, cli: Cli) -> None:
    prefix = daemon.settings.amqp_prefix
    # An invalid request: intake dead-letters it with its reason.
    await bus.publish(b'{"model": "no-such-model"}', message_id="bad-1")
    # Two letters as another process or the broker would leave them (imaged's header; the broker's x-death).
    await bus.publish(
        seed_body("wanx2.1-t2i-turbo"),
        queue=f"{prefix}.dead",
        message_id="replay-1",
        headers={"x-imaged-original-queue": f"{prefix}.requests", "x-imaged-reason": "manual"},
    )
    await bus.publish(
        seed_body("star-3-alpha-t2i"),
        queue=f"{prefix}.dead",
        message_id="replay-2",
        headers={"x-death": [{"queue": f"{prefix}.requests", "reason": "delivery_limit", "count": 1}]},
    )
    await bus.wait_terminal(["bad-1"], within=20)

    async def listed() -> dict[str, dict[str, object]]:
        run = await cli("dead", "list", "--json")
        assert run.code == 0, run.err
        return {str(v["message_id"]): v for v in run.json()}

    first = await listed()
    assert set(first) == {"bad-1", "replay-1", "replay-2"}
    bad = first["bad-1"]
    assert bad["reason"] == "invalid_request" and bad["original_queue"] == f"{prefix}.requests"
    assert isinstance(bad["error"], dict) and "unknown model" in bad["error"]["message"]
    assert first["replay-2"]["reason"] == "delivery_limit"
    assert first["replay-2"]["original_queue"] == f"{prefix}.requests"
    assert set(await listed()) == set(first)  # listing leaves them in place
    run = await cli("dead", "list")
    assert "unknown model" in run.out and "MESSAGE ID" in run.out

    run = await cli("dead", "replay", "replay-1", "replay-2", "missing-1")
    assert run.code == EXIT_NOT_FOUND and "2 replayed" in run.err and "missing-1" in run.err
    terminal = await bus.wait_terminal(["replay-1", "replay-2"], within=30)
    assert {e["status"] for e in terminal.values()} == {"completed"}
    assert set(await listed()) == {"bad-1"}
    run = await cli("dead", "replay")
    assert run.code == 2 and "--all" in run.err  # a usage error: nothing selected


async def test_api_keys(daemon: Daemon, cli: Cli) -> None:
    run = await cli("keys", "add", "acme", "--label", "ci", "--json")
    assert run.code == 0, run.err
    added = run.json()
    key, key_id = added["key"], added["key_id"]
    assert added["tenant"] == "acme" and key.startswith(f"imk_{key_id}_")
    run = await cli("keys", "add", "second")
    assert run.code == 0 and run.out.strip().startswith("imk_") and "shown once" in run.err

    run = await cli("keys", "list", "--json")
    keys = {k["key_id"]: k for k in run.json()}
    assert keys[key_id]["tenant"] == "acme" and keys[key_id]["revoked_at"] is None
    assert key not in run.out and hashlib.sha256(key.encode()).hexdigest() not in run.out
    stored = await daemon.store.db["api_keys"].find_one({"_id": key_id})
    assert stored is not None and stored["digest"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(stored, default=str)

    # A daemon reading the same database takes the key for its tenant.
    settings = daemon.settings.model_copy(update={"api_key_cache_s": 0.0})
    auth = Authenticator(settings, ApiKeys(daemon.store.db["api_keys"]))
    await auth.start()
    assert not auth.open
    assert (await auth.authenticate(f"Bearer {key}")).tenant == "acme"

    run = await cli("keys", "revoke", key_id)
    assert run.code == 0 and f"revoked API key {key_id}" in run.out
    run = await cli("keys", "revoke", key_id)
    assert run.code == EXIT_NOT_FOUND
    run = await cli("keys", "list", "--active")
    assert key_id not in run.out and "second" in run.out
    with pytest.raises(AuthError):
        await auth.authenticate(f"Bearer {key}")
    run = await cli("keys", "add", "bad tenant!")
    assert run.code != 0 and "tenant" in run.err

    run = await cli("keys", "hash", stdin=b"some-key\n")
    assert run.out.strip() == hashlib.sha256(b"some-key").hexdigest()
