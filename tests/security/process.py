"""``imaged run`` as a subprocess: its own HTTP port, its log (stdout and stderr) in a file, its memory readable
from ``/proc``. The suite's own copy, so that it depends on the command line only, not on other suites' helpers."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    """One ``python -m imaged run`` with the given environment, run in the log file's directory."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imaged",
                "run",
                env={**self.env, "IMAGED_HTTP_PORT": str(self.port)},
                stdout=log,
                stderr=log,
                cwd=str(self.log_path.parent),  # no .env file there: the environment is all it reads
            )

    async def wait_ready(self, within: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.port}/health/ready"
        async with aiohttp.ClientSession() as http, asyncio.timeout(within):
            while True:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM, and the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            return await self.proc.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
