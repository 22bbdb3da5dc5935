"""Scenario 9: the leak check of the whole suite. Every scenario above counted, in what it could see (subprocess
logs; in-process events, HTTP bodies, stored tasks and redacted log lines), the places where a configured secret or
any 10 consecutive characters of it appear. This sums them up; it runs last (file order) and must find 0."""

from __future__ import annotations

from collections import defaultdict

import pytest

from .support import LeakLedger


def test_no_configured_secret_leaked_in_any_scenario(ledger: LeakLedger) -> None:
    if not ledger.rows:
        pytest.skip("nothing to sum up: run it with the rest of tests/security")
    wheres: dict[str, set[str]] = defaultdict(set)
    scanned: dict[str, dict[tuple[int, str], int]] = defaultdict(dict)
    secrets: dict[str, set[str]] = defaultdict(set)
    leaks: dict[str, int] = defaultdict(int)
    for row in ledger.rows:
        wheres[row.scenario].add(row.where)
        scanned[row.scenario][(row.check, row.where)] = row.chars
        secrets[row.scenario].add(row.secret)
        leaks[row.scenario] += row.leaks
    for scenario in sorted(wheres):
        print(
            f"leak check {scenario}: {', '.join(sorted(wheres[scenario]))}; "
            f"{sum(scanned[scenario].values()):,} characters; secrets {', '.join(sorted(secrets[scenario]))} "
            f"-> {leaks[scenario]} leaks"
        )
    print(f"leak check, whole suite: {len(wheres)} scenarios -> {ledger.total} leaks of a configured secret")
    assert ledger.total == 0
