"""The README's "Command line" table and the click group name the same commands, so neither can drift.

Each backquoted span of the table's first column names a command (``imaged dead replay ID...``, or ``keys list``
after ``imaged keys add``): its leading lower-case words are the command and, for a group, the subcommand.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from imaged.cli import main

pytestmark = pytest.mark.timeout(30)

README = Path(__file__).resolve().parents[2] / "README.md"
WORD = re.compile(r"[a-z][a-z0-9-]*")


def documented() -> set[tuple[str, ...]]:
    """The command paths the table names: ("status",), ("dead", "list"), ..."""
    section = README.read_text(encoding="utf-8").partition("\n## Command line\n")[2].partition("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # after the heading and ---
    assert rows, "README.md has no 'Command line' table"
    paths: set[tuple[str, ...]] = set()
    for row in rows:
        first_column = re.split(r"(?<!\\)\|", row)[1]
        for span in re.findall(r"`([^`]+)`", first_column):
            words = span.split()
            if words and words[0] == "imaged":
                words = words[1:]
            path: list[str] = []
            for word in words:
                if not WORD.fullmatch(word):
                    break
                path.append(word)
            assert path, f"no command in {span!r}"
            paths.add(tuple(path[:2]))
    return paths


def resolve(path: tuple[str, ...]) -> click.Command | None:
    """The command of ``imaged PATH`` (a group's subcommand if the path names one), or None."""
    command = main.commands.get(path[0])
    if isinstance(command, click.Group) and len(path) > 1:
        return command.commands.get(path[1])
    return command


def registered() -> set[tuple[str, ...]]:
    """Every command that does something: ("status",), ("dead", "list"), ..."""
    paths: set[tuple[str, ...]] = set()
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            paths.update((name, sub) for sub in command.commands)
        else:
            paths.add((name,))
    return paths


def test_every_documented_command_is_registered() -> None:
    missing = [" ".join(path) for path in sorted(documented()) if resolve(path) is None]
    assert not missing, f"documented in README.md but not registered in imaged.cli.main: {missing}"


def test_every_registered_command_is_documented() -> None:
    docs = {
        path if isinstance(main.commands.get(path[0]), click.Group) else path[:1] for path in documented()
    }
    undocumented = [" ".join(path) for path in sorted(registered()) if path not in docs]
    assert not undocumented, f"registered but missing from README.md's Command line table: {undocumented}"
