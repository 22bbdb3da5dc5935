"""`imaged bench` runs end to end and reports every figure with its reference (a small run: no timing claims).

What it can assert is what does not depend on the machine's speed: every task completed, database commands per
task stay within the budget at every size and slot cap, and a download's memory stays near the chunk size.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..support import AMQP_URL, MONGODB_URL

pytestmark = pytest.mark.timeout(300)

COMMANDS_PER_TASK_BUDGET = 6


def test_bench_prints_one_json_line_of_figures(services: None) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "imaged",
            "bench",
            "--only",
            "b1,b4",
            "--tasks",
            "40",
            "--sizes",
            "20,40",
            "--retained",
            "300",
            "--caps",
            "5,50",
            "--cap-tasks",
            "20",
            "--b4-mb",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={"PATH": "/usr/bin:/bin", "IMAGED_AMQP_URL": AMQP_URL, "IMAGED_MONGODB_URL": MONGODB_URL},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout
    report = json.loads(lines[0])
    print(lines[0])

    b1 = report["b1"]
    assert b1["failed"] == 0 and b1["tasks"] == 40
    assert b1["reference"]["broker_round_trip_msg_per_s"] > 0
    assert b1["reference"]["database_floor_tasks_per_s"] > 0
    assert b1["of_database_floor"] > 0 and b1["of_broker_round_trip"] > 0
    runs = [b1, b1["flat"]["20"], b1["flat"]["40"], *b1["slot_caps"].values()]
    assert b1["flat"]["retained"] == 300
    assert all(r["failed"] == 0 for r in runs)
    assert all(0 < r["db_commands_per_task"] <= COMMANDS_PER_TASK_BUDGET for r in runs), runs

    b4 = report["b4"]
    assert b4["bytes"] > 2_000_000 and b4["mb_per_s"] > 0 and b4["reference_mb_per_s"] > 0
    # The image is streamed: Python holds a few chunks at most, never the image.
    assert b4["python_peak_alloc_bytes"] < 8 * b4["chunk_bytes"] < b4["bytes"]
