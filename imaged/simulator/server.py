"""The emulator's server: both provider APIs on one aiohttp app, the image route, and the `/_sim` control routes.

Control routes (JSON):
    GET    /_sim/health            liveness
    GET    /_sim/stats             per provider and per credential counters (see `build_stats`)
    GET    /_sim/faults            active faults
    POST   /_sim/faults            add a fault (object) or several (list); see faults.FaultSpec
    DELETE /_sim/faults            remove all faults
    DELETE /_sim/faults/{id}       remove one fault
    POST   /_sim/reset             forget tasks, stats and faults
    GET    /_sim/config            settings, without secrets
    POST   /_sim/config            change settings (partial object), e.g. {"task_seconds": 0}
    GET    /_sim/tasks             every task: id, provider, when it ends (or ended) on the wall clock
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from . import dashscope, liblibai
from .config import SimulatorConfig, key_label
from .faults import MALFORMED_JSON, TRANSPORT_KINDS, Fault, hold, retry_after_header
from .images import parse_name
from .state import PROVIDERS, SimState

logger = logging.getLogger(__name__)

DASHSCOPE_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")
LIBLIB_STATES = ("1", "2", "3", "4", "5", "6", "7")
SLOW_CHUNKS = 10


def build_stats(state: SimState) -> dict[str, Any]:
    """Counters per provider and per credential, tasks by state (as the provider reports them), and faults.

    Shape: {"uptime_seconds", "providers": {"aliyun"|"liblibai": {<counters>, "in_flight", "tasks",
    "tasks_by_state", "concurrency_limit", "submit_per_second", "credentials": {label: {<counters>,
    "in_flight", "tasks", "tasks_by_state"}}}}, "faults": [...]}. Counters: submits, rejected, polls, cancels,
    downloads, auth_failures, signature_failures, rate_limited, concurrency_limit_hits, faults_injected,
    max_concurrent. DashScope states are task_status words; LiblibAI states are generateStatus numbers.
    Credentials are LiblibAI AccessKeys and DashScope key labels (`key_label`: a hash, never the key).
    """
    now = time.monotonic()
    config = state.config
    for key in config.dashscope_keys():
        state.account("aliyun", key_label(key))
    for access_key in config.liblib_secrets():
        state.account("liblibai", access_key)
    providers: dict[str, Any] = {}
    for provider in PROVIDERS:
        names = DASHSCOPE_STATES if provider == "aliyun" else LIBLIB_STATES
        by_state = dict.fromkeys(names, 0)
        by_credential: dict[str, dict[str, int]] = {}
        for task in state.tasks.values():
            if task.provider != provider:
                continue
            if provider == "aliyun":
                name = dashscope.task_status(state, task, now, peek=True)
            else:
                name = str(liblibai.generate_status(state, task, now, peek=True))
            by_state[name] += 1
            by_credential.setdefault(task.credential, dict.fromkeys(names, 0))[name] += 1
        credentials: dict[str, Any] = {}
        for (owner, label), account in state.accounts.items():
            if owner != provider:
                continue
            counts = by_credential.get(label, dict.fromkeys(names, 0))
            credentials[label] = {
                **account.counters.to_json(),
                "in_flight": account.in_flight(now),
                "tasks": sum(counts.values()),
                "tasks_by_state": counts,
            }
            if provider == "liblibai":
                credentials[label]["account_balance"] = state.balance(account)
        cap, rate = state.limits(provider)
        providers[provider] = {
            **state.totals[provider].to_json(),
            "in_flight": state.in_flight(provider, now),
            "tasks": sum(by_state.values()),
            "tasks_by_state": by_state,
            "concurrency_limit": cap,
            "submit_per_second": rate,
            "credentials": credentials,
        }
    return {
        "uptime_seconds": round(now - state.started, 3),
        "providers": providers,
        "faults": state.faults.to_json(),
    }


def _download_error(status: int, retry_after: float | None) -> web.StreamResponse:
    return web.Response(
        status=status, text=f"emulated HTTP {status}", headers=retry_after_header(retry_after)
    )


class Images:
    """Serves the result images named in task results, with the download faults."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def get(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        name = parse_name(request.match_info["name"])
        if name is None:
            return web.Response(status=404, text="NoSuchKey: the specified image does not exist")
        expires = request.query.get("Expires", "")
        if expires.isdigit() and int(expires) < time.time():
            return web.Response(status=403, text="AccessDenied: Request has expired")

        async def serve(_: web.Request) -> web.StreamResponse:
            data = await state.images.get(name.width, name.height, name.fill)
            return web.Response(body=data, content_type="image/png")

        if request.method != "GET":  # HEAD: neither counted nor faulted
            return await serve(request)
        task = state.tasks.get(name.task_id)
        state.count(name.provider, task.credential if task is not None else None, "downloads")
        fault = state.faults.draw(name.provider, "download", TRANSPORT_KINDS | {"truncated"})
        if fault is None:
            return await serve(request)
        if fault.spec.kind not in ("slow", "truncated", "malformed_json"):
            return await state.inject(request, name.provider, fault, serve, _download_error)
        state.count(name.provider, None, "faults_injected")
        data = await state.images.get(name.width, name.height, name.fill)
        if fault.spec.kind == "malformed_json":
            # A PNG signature followed by garbage: sniffs as PNG, does not decode.
            return web.Response(body=data[:16] + MALFORMED_JSON * 8, content_type="image/png")
        return await self._stream(request, data, fault)

    async def _stream(self, request: web.Request, data: bytes, fault: Fault) -> web.StreamResponse:
        """A slow chunked body, or a body cut short of its Content-Length ("truncated")."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if fault.spec.kind == "truncated":
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()
            return response
        response.enable_chunked_encoding()
        await response.prepare(request)
        step = max(1, -(-len(data) // SLOW_CHUNKS))
        for offset in range(0, len(data), step):
            await response.write(data[offset : offset + step])
            await hold(self.state.closing, fault.seconds / SLOW_CHUNKS)
            if self.state.closing.is_set():
                break
        await response.write_eof()
        return response


class Control:
    """The `/_sim` routes: stats, faults, reset and settings at run time."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_sim/health", self.health),
            web.get("/_sim/stats", self.stats),
            web.get("/_sim/faults", self.list_faults),
            web.post("/_sim/faults", self.add_faults),
            web.delete("/_sim/faults", self.clear_faults),
            web.delete("/_sim/faults/{fault_id:\\d+}", self.remove_fault),
            web.post("/_sim/reset", self.reset),
            web.get("/_sim/config", self.get_config),
            web.post("/_sim/config", self.set_config),
            web.get("/_sim/tasks", self.tasks),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(build_stats(self.state))

    async def list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.state.faults.to_json()})

    async def add_faults(self, request: web.Request) -> web.Response:
        try:
            added = self.state.faults.add(await _json(request))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        logger.info("faults added: %s", [f.to_json() for f in added])
        return web.json_response({"faults": [f.to_json() for f in added]})

    async def clear_faults(self, request: web.Request) -> web.Response:
        count = len(self.state.faults.to_json())
        self.state.faults.clear()
        return web.json_response({"cleared": count})

    async def remove_fault(self, request: web.Request) -> web.Response:
        if not self.state.faults.remove(int(request.match_info["fault_id"])):
            return web.json_response({"error": "no such fault"}, status=404)
        return web.json_response({"cleared": 1})

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        logger.info("emulator reset: tasks, stats and faults cleared")
        return web.json_response({"status": "reset"})

    async def tasks(self, request: web.Request) -> web.Response:
        """When each task ends, so that a benchmark can measure how late its completion was noticed."""
        now = time.monotonic()
        tasks = [
            {
                "id": task.id,
                "provider": task.provider,
                "ends_at": round(task.wall(task.ends), 6),
                "finished": task.finished(now),
            }
            for task in self.state.tasks.values()
        ]
        return web.json_response({"tasks": tasks})

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.config.public())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = await _json(request)
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            self.state.config.update(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        logger.info("emulator settings changed: %s", sorted(changes))
        return web.json_response(self.state.config.public())


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.text())
    except ValueError:
        raise ValueError("the body is not valid JSON") from None


def build_app(state: SimState) -> web.Application:
    app = web.Application()
    app.add_routes(dashscope.DashScope(state).routes())
    app.add_routes(liblibai.LiblibAI(state).routes())
    app.add_routes([web.get("/_sim/images/{name}", Images(state).get)])
    app.add_routes(Control(state).routes())
    return app


class Simulator:
    """One emulator server speaking DashScope at `{url}/api/v1` and LiblibAI at `{url}`."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.state = SimState(self.config)
        self.app = build_app(self.state)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) and return the base URL, e.g. http://127.0.0.1:8900."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self.state.closing = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = runner.addresses[0][1]
        self._runner = runner
        self._url = f"http://{_url_host(host)}:{bound_port}"
        self.state.base_url = self._url
        logger.info(
            "provider emulator at %s (DashScope %s, LiblibAI %s)",
            self._url,
            self.dashscope_base_url,
            self._url,
        )
        return self._url

    async def stop(self) -> None:
        """Stop listening; requests held by faults are released at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.state.closing.set()
        await runner.cleanup()
        logger.info("provider emulator at %s stopped", self._url)

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    @property
    def dashscope_base_url(self) -> str:
        return f"{self.url}{dashscope.BASE}"

    @property
    def liblib_base_url(self) -> str:
        return self.url

    def stats(self) -> dict[str, Any]:
        """The same as `GET /_sim/stats`."""
        return build_stats(self.state)


def _url_host(host: str) -> str:
    """A host usable in a URL: wildcard addresses become loopback, IPv6 gets brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def run_simulator(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve the emulator until cancelled (what `imaged simulate` runs)."""
    simulator = Simulator(config)
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
