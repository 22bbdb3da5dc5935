"""The original README's curl commands, verbatim, against a daemon started the way `make run` starts it
(`imaged run --simulate-without-keys`, in a test's namespace, on a free port). With authentication on, the same
commands carry an added ``-H "Authorization: Bearer ..."``; without it they are refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from imaged.auth import key_digest

from ..support import SEED_MODELS, Bus

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]

# From the original service's README, byte for byte ("API使用": create, 查询任务状态, 获取任务结果).
CREATE = {
    "wanx2.1-t2i-turbo": """curl -X POST "http://localhost:8001/api/v1/tasks/" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "wanx2.1-t2i-turbo",
    "provider": "aliyun",
    "parameters": {
      "prompt": "一只可爱的小猫咪在草地上玩耍",
      "negative_prompt": "模糊, 扭曲, 低质量",
      "size": "1024*1024",
      "n": 1
    },
    "is_async": true
  }'""",
    "star-3-alpha-t2i": """curl -X POST "http://localhost:8001/api/v1/tasks/" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "star-3-alpha-t2i",
    "provider": "liblibai",
    "parameters": {
      "prompt": "1 girl,lotus leaf,masterpiece,best quality,finely detail,highres,8k,beautiful and aesthetic,no watermark",
      "aspectRatio": "portrait",
      "imgCount": 1,
      "steps": 30
    },
    "is_async": true
  }'""",
    "star-3-alpha-i2i": """curl -X POST "http://localhost:8001/api/v1/tasks/" \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "star-3-alpha-i2i",
    "provider": "liblibai",
    "parameters": {
      "prompt": "focus on the cat,there is a cat holding a bag of mcdonald, product advertisement",
      "sourceImage": "https://example.com/source-image.jpg",
      "width": 768,
      "height": 1024,
      "imgCount": 1
    },
    "is_async": true
  }'""",
    "liblib-custom": """curl -X POST "http://localhost:8001/api/v1/tasks/" \\
  -H "Content-Type: application/json" \\
  -d '{
  "model": "liblib-custom",
  "provider": "liblibai",
  "parameters": {
    "baseModelType": "f1",
    "checkPointId": "412b427ddb674b4dbab9e5abd5ae6057",
    "prompt": "短发女孩",
    "generateParams": {
      "negativePrompt": "低质量，模糊",
      "sampler": 1,
      "steps": 30,
      "cfgScale": 3.5,
      "width": 720,
      "height": 1440,
      "imgCount": 1,
      "additionalNetwork": [{
                 "modelId": "d250a31f321e4cee84fe4115cabb8bc4",
                 "weight": 0.8
                }]
    }
  },
  "is_async": true
}'""",
}
STATUS = 'curl "http://localhost:8001/api/v1/tasks/{task_id}/status"'
RESULT = 'curl "http://localhost:8001/api/v1/tasks/{task_id}/result"'
API_KEY = "seed-curl-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def adapt(command: str, port: int, *, auth: bool, task_id: str | None = None) -> str:
    """The README's command on the test's port; with auth, one header more. Nothing else changes."""
    command = command.replace("http://localhost:8001", f"http://localhost:{port}")
    if task_id is not None:
        command = command.replace("{task_id}", task_id)
    if auth:
        command = command.replace("curl ", f'curl -H "Authorization: Bearer {API_KEY}" ', 1)
    return command


async def sh(command: str) -> dict[str, object]:
    """Run a shell command line (as a user pastes it) and parse its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"{command} --silent --show-error",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    body: dict[str, object] = json.loads(out)
    return body


@contextlib.asynccontextmanager
async def make_run(namespace: str, tmp_path: Path, port: int, *, auth: bool) -> AsyncIterator[list[bytes]]:
    """`.venv/bin/imaged run --simulate-without-keys` with the test's namespace; yields its stderr lines."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IMAGED_")
        and k not in ("ALIYUN_API_KEY", "LIBLIBAI_ACCESS_KEY", "LIBLIBAI_SECRET_KEY")
    }
    env.update(
        IMAGED_AMQP_PREFIX=namespace,
        IMAGED_MONGODB_DB=namespace,
        IMAGED_HTTP_PORT=str(port),
        IMAGED_IMAGE_DIR=str(tmp_path / "images"),
        IMAGED_LOG_FORMAT="json",
    )
    for name in ("IMAGED_TEST_AMQP_URL", "IMAGED_TEST_MONGODB_URL"):
        if name in os.environ:
            env[name.replace("_TEST", "")] = os.environ[name]
    if auth:
        env["IMAGED_API_KEYS"] = json.dumps({"seed-user": key_digest(API_KEY)})
    imaged = Path(sys.executable).parent / "imaged"
    proc = await asyncio.create_subprocess_exec(
        str(imaged),
        "run",
        "--simulate-without-keys",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[bytes] = []

    async def drain() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            lines.append(line)

    reader = asyncio.create_task(drain())
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, b"".join(lines).decode()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/health/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.2)
        yield lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        await reader
    assert code == 0, b"".join(lines[-20:]).decode()


@pytest.mark.parametrize("auth", [False, True], ids=["open", "api-key"])
async def test_readme_curl_commands(namespace: str, tmp_path: Path, bus: Bus, auth: bool) -> None:
    port = free_port()
    async with make_run(namespace, tmp_path, port, auth=auth) as log_lines:
        if auth:  # the verbatim command, without a credential, is refused
            refused = await sh(adapt(STATUS, port, auth=False, task_id="x"))
            assert refused["success"] is False and "authentication required" in str(refused["message"])
        task_ids = {}
        for model in SEED_MODELS:
            created = await sh(adapt(CREATE[model], port, auth=auth))
            assert created["success"] is True, created
            results = created["results"]
            assert isinstance(results, dict) and results["status"] == "pending"
            task_ids[model] = str(results["task_id"])
        await bus.wait_terminal(task_ids.values(), within=60)
        for model, task_id in task_ids.items():
            status = await sh(adapt(STATUS, port, auth=auth, task_id=task_id))
            assert status["success"] is True and status["message"] == "获取任务状态成功"
            assert isinstance(status["results"], dict) and status["results"]["status"] == "completed"
            result = await sh(adapt(RESULT, port, auth=auth, task_id=task_id))
            assert result["success"] is True and result["message"] == "获取任务结果成功"
            results = result["results"]
            assert isinstance(results, dict) and set(results) == {"task_id", "status", "result", "error"}
            assert results["task_id"] == task_id and results["error"] is None
            assert results["result"]["model"] == model
            image = Path(results["result"]["images"][0]["local_path"])
            assert image.parent == (tmp_path / "images").resolve()
            assert await asyncio.to_thread(image.is_file)
    logged = b"".join(log_lines).decode()
    assert API_KEY not in logged
    if not auth:
        assert "OPEN MODE" in logged and "SIMULATION MODE" in logged
