"""Control routes (`/_sim/...`), the Simulator lifecycle and `run_simulator`."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from imaged.simulator import Simulator, SimulatorConfig, key_label, run_simulator

from .conftest import STAR3_T2I, T2I, dashscope, liblib, sim_post, star3_body, t2i_body

pytestmark = pytest.mark.timeout(30)


async def test_health_and_base_urls(sim: Simulator, http: aiohttp.ClientSession) -> None:
    assert sim.url.startswith("http://127.0.0.1:")
    assert sim.dashscope_base_url == f"{sim.url}/api/v1"
    assert sim.liblib_base_url == sim.url
    async with http.get(f"{sim.url}/_sim/health") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})


async def test_stats_shape_and_http_route_agree(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await liblib(http, sim, STAR3_T2I, star3_body(aspectRatio="square"))
    async with http.get(f"{sim.url}/_sim/stats") as resp:
        over_http = await resp.json()
    direct = sim.stats()
    assert set(over_http) == {"uptime_seconds", "providers", "faults"}
    for provider in ("aliyun", "liblibai"):
        assert over_http["providers"][provider]["submits"] == direct["providers"][provider]["submits"] == 1
    counters = {
        "submits",
        "rejected",
        "polls",
        "cancels",
        "downloads",
        "auth_failures",
        "signature_failures",
        "rate_limited",
        "concurrency_limit_hits",
        "faults_injected",
        "max_concurrent",
    }
    aliyun = direct["providers"]["aliyun"]
    assert counters <= set(aliyun)
    assert set(aliyun["tasks_by_state"]) == {"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"}
    assert sum(aliyun["tasks_by_state"].values()) == aliyun["tasks"] == 1
    credential = aliyun["credentials"][key_label("sk-sim")]
    assert counters <= set(credential) and credential["submits"] == 1
    liblibai = direct["providers"]["liblibai"]
    assert set(liblibai["tasks_by_state"]) == {"1", "2", "3", "4", "5", "6", "7"}
    assert liblibai["credentials"]["sim-access"]["account_balance"] < SimulatorConfig().liblib_initial_balance
    assert "sk-sim" not in str(direct) and "sim-secret" not in str(direct)


async def test_reset_clears_tasks_stats_and_faults(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, submitted, _ = await dashscope(http, sim, "POST", T2I, t2i_body(n=1))
    await sim_post(http, sim, "/_sim/faults", {"stage": "poll", "kind": "http_500", "rate": 0.1})
    assert await sim_post(http, sim, "/_sim/reset", {}) == {"status": "reset"}
    stats = sim.stats()
    assert stats["faults"] == []
    assert stats["providers"]["aliyun"]["submits"] == 0
    assert stats["providers"]["aliyun"]["tasks"] == 0
    _, polled, _ = await dashscope(http, sim, "GET", f"/api/v1/tasks/{submitted['output']['task_id']}")
    assert polled["output"]["task_status"] == "UNKNOWN"


async def test_config_route(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/_sim/config") as resp:
        shown = await resp.json()
    assert shown["task_seconds"] == 0.2
    text = str(shown)
    assert "sk-sim" not in text and "sim-secret" not in text
    assert shown["liblib_credentials"] == ["sim-access"]

    changed = await sim_post(http, sim, "/_sim/config", {"task_seconds": 0, "liblib_concurrency_limit": 3})
    assert (changed["task_seconds"], changed["liblib_concurrency_limit"]) == (0, 3)
    assert sim.config.liblib_concurrency_limit == 3
    lifted = await sim_post(http, sim, "/_sim/config", {"liblib_concurrency_limit": None})
    assert lifted["liblib_concurrency_limit"] is None

    for bad in ({"task_seconds": -1}, {"no_such_setting": 1}, {"liblib_concurrency_limit": 0}, [1], "x"):
        async with http.post(f"{sim.url}/_sim/config", json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]
    assert sim.config.task_seconds == 0  # failed updates change nothing


def test_config_validates_on_construction() -> None:
    with pytest.raises(ValueError, match="task_seconds"):
        SimulatorConfig(task_seconds=-1)
    with pytest.raises(ValueError, match="dashscope_submit_per_second"):
        SimulatorConfig(dashscope_submit_per_second=0)
    assert SimulatorConfig(public_url="http://x:1/").public_url == "http://x:1"


async def test_url_before_start_and_double_start() -> None:
    simulator = Simulator()
    with pytest.raises(RuntimeError):
        _ = simulator.url
    await simulator.start()
    try:
        with pytest.raises(RuntimeError):
            await simulator.start()
    finally:
        await simulator.stop()
    await simulator.stop()  # stopping twice is harmless


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_run_simulator_serves_until_cancelled(http: aiohttp.ClientSession) -> None:
    port = _free_port()
    server = asyncio.create_task(run_simulator(SimulatorConfig(task_seconds=0), "127.0.0.1", port))
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            async with http.get(f"{url}/_sim/health") as resp:
                assert resp.status == 200
                break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("run_simulator never answered")
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{url}/_sim/health"):
            pass
