"""Scenario 6: a task keeps (and bills) only the images it asked for, and an image larger than the model allows or
a decompression bomb fails at once, fetched once."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from aiohttp import web

from ..support import Bus
from .conftest import StartDaemon
from .hostile import GOOD_PNG, HostileDashScope, HostileTask, Script, png, succeeded
from .support import (
    LOOPBACK,
    PRICE_PER_IMAGE,
    LeakLedger,
    LogCapture,
    crash_signs,
    daemon_secrets,
    request_bytes,
    stored_doc,
)

pytestmark = pytest.mark.timeout(120)

BOMB = png(100_000, 100_000)  # 10^10 pixels announced in a few hundred bytes
HUGE = png(12_000, 12_000)  # a valid header, over the model's 4 x 1440 pixels a side


async def test_images_beyond_n_are_neither_kept_nor_billed_and_oversize_images_fail_at_once(
    start_daemon: StartDaemon,
    bus: Bus,
    hostile: HostileDashScope,
    tmp_path: Path,
    logs: LogCapture,
    ledger: LeakLedger,
) -> None:
    daemon = await start_daemon(download_allowed_networks=LOOPBACK)
    assert len(BOMB) < 400 and len(HUGE) < 400
    for name, data in (
        ("bomb-1.png", BOMB),
        ("bomb-2.png", BOMB),
        ("huge-1.png", HUGE),
        ("huge-2.png", HUGE),
    ):
        hostile.images[name] = data
    for name in [f"many-{i}.png" for i in range(40)] + ["good-b.png", "good-h.png"]:
        hostile.images[name] = GOOD_PNG

    def urls(*names: str) -> Script:
        async def poll(task: HostileTask) -> web.StreamResponse:
            usage = {"image_count": len(names)}
            return succeeded(task.id, [f"http://127.0.0.1:{hostile.port}/img/{n}" for n in names], usage)

        return Script(poll=poll)

    cases = {
        "many": (1, urls(*[f"many-{i}.png" for i in range(40)])),
        "bomb-alone": (1, urls("bomb-1.png")),
        "bomb-and-good": (2, urls("bomb-2.png", "good-b.png")),
        "huge-alone": (1, urls("huge-1.png")),
        "huge-and-good": (2, urls("huge-2.png", "good-h.png")),
    }
    ids = {name: secrets.token_hex(12) for name in cases}
    for name, (n, script) in cases.items():
        hostile.script(name, script)
        await bus.publish(request_bytes(name, ids[name], n=n))
    events = await bus.wait_terminal(ids.values(), within=30)
    outcome = {name: events[ids[name]] for name in cases}

    many = outcome["many"]
    assert many["status"] == "completed", many.get("error")
    assert len(many["result"]["images"]) == 1
    assert many["result"]["cost"] == pytest.approx(PRICE_PER_IMAGE)
    fetched = sum(hostile.image_hits[f"many-{i}.png"] for i in range(40))
    assert fetched == 1

    for kind, code in (("bomb", "decompression_bomb"), ("huge", "image_too_large")):
        alone = outcome[f"{kind}-alone"]
        assert alone["status"] == "failed", alone
        assert alone["error"]["category"] == "download_failed"
        assert hostile.image_hits[f"{kind}-1.png"] == 1
        mixed = outcome[f"{kind}-and-good"]
        assert mixed["status"] == "completed", mixed.get("error")
        assert [f["code"] for f in mixed["result"]["failed_images"]] == [code]
        assert len(mixed["result"]["images"]) == 1
        assert mixed["result"]["cost"] == pytest.approx(PRICE_PER_IMAGE)
        assert hostile.image_hits[f"{kind}-2.png"] == 1

    stored = await stored_doc(daemon, ids["many"])
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    saved = [p for p in files if p.suffix == ".png"]
    assert len(saved) == 3, files  # one image each for "many", "bomb-and-good", "huge-and-good"
    assert [p for p in files if p.name.endswith(".part")] == []  # no partial download left behind
    assert crash_signs(logs.lines) == []
    texts = {"events": json.dumps([bus.events[t] for t in ids.values()]), "logs": logs.text}
    assert ledger.check("6 images", daemon_secrets(daemon), texts) == 0
    bomb_message = outcome["bomb-alone"]["error"]["message"]
    huge_message = outcome["huge-alone"]["error"]["message"]
    print(
        f"40 URLs for n=1 -> 1 image kept and fetched, cost {stored['result']['cost']} (1 x {PRICE_PER_IMAGE}), "
        f"provider usage kept as reported: {json.dumps(stored['result']['usage'])}"
    )
    print(
        f"PNG announcing 100000x100000 ({len(BOMB)} bytes) -> decompression_bomb, fetched "
        f"{hostile.image_hits['bomb-1.png']}x: {bomb_message[:110]!r}"
    )
    print(
        f"PNG announcing 12000x12000 for 1024*1024 -> image_too_large, fetched {hostile.image_hits['huge-1.png']}x: "
        f"{huge_message[:110]!r}; with a good second image: completed, failed_images codes "
        f"{[f['code'] for f in outcome['huge-and-good']['result']['failed_images']]}"
    )
