"""The processes a benchmark measures: the provider emulator and one imaged daemon, each its own process.

CPU time and memory come from ``/proc`` (Linux), so nothing is added to the measured process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

READY_TIMEOUT_S = 60.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Usage:
    """A process's CPU seconds so far, and its resident memory now and at its peak (bytes)."""

    cpu_s: float
    rss: int
    peak_rss: int


def usage(pid: int) -> Usage:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / _TICKS  # utime + stime
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return Usage(cpu, fields.get("VmRSS", 0), fields.get("VmHWM", 0))


class Process:
    """A child process started with ``python -m imaged ...``; its output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        #: it runs in the folder of its log, so that no .env file of the caller's is read
        self.cwd = log_path.parent
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imaged",
                *self.args,
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def usage(self) -> Usage:
        return usage(self.pid)

    async def wait_ready(self, url: str) -> None:
        """Until ``url`` answers 200; fails with the end of the log if the process dies first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready; its log ends:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Emulator(Process):
    """``imaged simulate`` with every provider limit lifted."""

    def __init__(self, env: dict[str, str], log_path: Path, task_seconds: float) -> None:
        self.port = free_port()
        super().__init__(
            "emulator",
            ["simulate", "--port", str(self.port), "--no-limits", "--task-seconds", str(task_seconds)],
            env,
            log_path,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await super().start()
        await self.wait_ready(f"{self.url}/_sim/health")

    async def configure(self, **changes: Any) -> None:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/_sim/config", json=changes) as r:
            if r.status != 200:
                raise RuntimeError(f"emulator refused {changes}: {await r.text()}")

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/_sim/reset") as resp:
            resp.raise_for_status()

    async def task_ends(self) -> dict[str, float]:
        """Provider task id -> wall-clock time its task ended (or ends)."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/_sim/tasks") as resp:
            data = await resp.json()
        return {t["id"]: float(t["ends_at"]) for t in data["tasks"]}


class Daemon(Process):
    """``imaged run`` pointed at the emulator, in its own queue prefix and database."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        super().__init__("daemon", ["run"], {**env, "IMAGED_HTTP_PORT": str(self.port)}, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await super().start()
        await self.wait_ready(f"{self.url}/health/ready")

    async def db_commands(self) -> float:
        """Database commands the daemon has sent so far (its ``imaged_db_commands_total``)."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("imaged_db_commands_total{")
        )
