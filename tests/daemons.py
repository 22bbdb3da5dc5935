"""``imaged run`` as a subprocess, for the suites that need the real command: its own HTTP port, its log (stdout
and stderr) in a file, run in the log file's directory (no ``.env`` there: the environment is all it reads)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from .servers import free_port


class DaemonProcess:
    """One ``imaged run`` subprocess with its own HTTP port and log file."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self.port = free_port()
        env = {**self.env, "IMAGED_HTTP_PORT": str(self.port)}
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imaged",
                "run",
                *self.args,
                env=env,
                stdout=log,
                stderr=log,
                cwd=str(self.log_path.parent),
            )
        finally:
            log.close()

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
                await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def terminate(self, within: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            return await self.proc.wait()
