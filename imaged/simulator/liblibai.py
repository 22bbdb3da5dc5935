"""The LiblibAI open API, as providers.md §2 and "Model families, 2026" describe it: signed POST requests,
`{code, msg, data}` envelope, generateStatus 1..7, auditStatus, points and balance, and the per-account caps.

The lines (which path takes which template, what each accepts and costs) are `liblibai_lines` and `comfyui`;
this module serves them: signature, limits, faults, the four status paths and the answers.

Signature verification lives here on purpose, written independently of imaged's own client, so that a mistake in
one is caught by the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any, Final

from aiohttp import web

from . import comfyui
from .faults import retry_after_header
from .images import ImageName, fill_for
from .liblibai_lines import POINTS_PER_IMAGE, SUBMIT_PATHS, parse_submit, status_kinds
from .liblibai_params import LiblibError, missing
from .state import Account, SimState, SimTask

PROVIDER: Final = "liblibai"
SIGNATURE_WINDOW_MS = 5 * 60 * 1000
URL_LIFETIME = 7 * 24 * 3600
WEBUI_STATUS = "/api/generate/webui/status"
UNIFIED_STATUS = "/api/generate/status"
STATUS_PATHS = (UNIFIED_STATUS, WEBUI_STATUS, *comfyui.STATUS_PATHS)
HTTP_CODES = frozenset({401, 403, 429})
"""Codes that may arrive as an HTTP status (see SimulatorConfig.liblib_error_style); the rest are envelopes."""

__all__ = ["PROVIDER", "LiblibAI", "LiblibError", "envelope", "fault_error", "generate_status", "sign"]


def sign(secret: str, path: str, timestamp: str, nonce: str) -> str:
    """URL-safe base64 (no `=` padding) of HMAC-SHA1(secret, "path&timestamp&nonce")."""
    digest = hmac.new(secret.encode(), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def envelope(
    code: int = 0, msg: str = "", data: Any = None, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"code": code, "msg": msg, "data": data}, status=status, headers=headers)


def fault_error(status: int, retry_after: float | None) -> web.StreamResponse:
    """LiblibAI's answer to an injected HTTP 429 or 500."""
    if status == 429:
        return envelope(429, "too many requests", None, 429, retry_after_header(retry_after))
    return envelope(200000, "internal error", None, 500)


def generate_status(state: SimState, task: SimTask, now: float, *, peek: bool = False) -> int:
    """The task's generateStatus at `now`: 1 waiting, 2 running, 3 generated, 4 reviewing, then 5, 6 or 7.

    ``peek`` (stats) never draws an outcome: a finished task nobody has polled yet counts as 5 (unless it timed
    out, which draws nothing). ComfyUI tasks know states 1..6 only: a timeout ends them in 6.
    """
    if not task.finished(now):
        progress = task.progress(now)
        return 1 if progress < 0.1 else 2 if progress < 0.8 else 3 if progress < 0.9 else 4
    if peek and task.outcome is None and not task.extras.get("timed_out"):
        return 5
    outcome = state.outcome(task)
    if outcome.kind == "fail":
        return 6
    if outcome.kind == "status7":
        return 6 if task.kind == "comfy" else 7
    if outcome.kind == "moderation":
        return 5 if outcome.variant in ("audit", "audit_listed") else 6
    return 5


class LiblibAI:
    """Route handlers of the LiblibAI API."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        guard = self.state.guarded
        submit = guard(PROVIDER, "submit", self.submit, fault_error)
        status = guard(PROVIDER, "poll", self.status, fault_error)
        return [
            *(web.post(path, submit) for path in SUBMIT_PATHS),
            *(web.post(path, status) for path in STATUS_PATHS),
        ]

    def _answer(self, error: LiblibError) -> web.Response:
        status = 200
        if error.code in HTTP_CODES and self.state.config.liblib_error_style == "http":
            status = error.code
        return envelope(error.code, error.msg, None, status, retry_after_header(error.retry_after))

    def _verify(self, request: web.Request) -> str:
        """Check the request's signature; returns its AccessKey or raises LiblibError(401)."""
        query = request.query
        access_key = query.get("AccessKey", "")
        signature = query.get("Signature", "")
        timestamp = query.get("Timestamp", "")
        nonce = query.get("SignatureNonce", "")
        secret = self.state.config.liblib_secrets().get(access_key)
        label = access_key if secret is not None else None
        try:
            if not (access_key and signature and timestamp and nonce):
                raise LiblibError(
                    401,
                    "signature verification failed: AccessKey, Signature, Timestamp and "
                    "SignatureNonce are required",
                )
            if secret is None:
                raise LiblibError(401, "signature verification failed: unknown AccessKey")
            if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > SIGNATURE_WINDOW_MS:
                raise LiblibError(401, "signature verification failed: Timestamp expired (5 minute window)")
            expected = sign(secret, request.path, timestamp, nonce)
            if not hmac.compare_digest(expected.encode(), signature.encode()):
                raise LiblibError(401, "signature verification failed")
        except LiblibError:
            self.state.count(PROVIDER, label, "signature_failures")
            raise
        return access_key

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.text())
        except ValueError:
            raise LiblibError(100000, "invalid parameters: the body is not valid JSON") from None

    async def submit(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        config = state.config
        try:
            access_key = self._verify(request)
            if not state.submit_allowed(PROVIDER, access_key):
                raise LiblibError(429, "too many requests: submit endpoints allow 1 request per second", 1.0)
            try:
                job = parse_submit(await self._body(request), request.path, config)
                unreachable = next((url for url in job.inputs if config.unreachable(url)), None)
                if unreachable is not None:
                    raise LiblibError(100030, f"input image unreachable: failed to download {unreachable}")
            except LiblibError:
                state.count(PROVIDER, access_key, "rejected")
                raise
            account = state.account(PROVIDER, access_key)
            cost = POINTS_PER_IMAGE[job.family] * job.count
            if state.balance(account) < cost:
                state.count(PROVIDER, access_key, "rejected")
                raise LiblibError(100021, "insufficient points")
            if state.faults.draw(PROVIDER, "submit", frozenset({"moderation"})) is not None:
                state.count(PROVIDER, access_key, "faults_injected")
                state.count(PROVIDER, access_key, "rejected")
                raise LiblibError(100052, "sensitive content in prompt")
            if not state.slot_free(PROVIDER, access_key):
                raise LiblibError(100054, "concurrent generation task limit reached")
        except LiblibError as exc:
            return self._answer(exc)
        account.points_spent += cost
        first = job.seed if job.seed is not None and job.seed >= 0 else state.rng.randint(0, 2**32 - 1)
        task = state.new_task(
            id=uuid.uuid4().hex,
            provider=PROVIDER,
            credential=access_key,
            kind=job.kind,
            model=job.template,
            width=job.width,
            height=job.height,
            seeds=[first + i for i in range(job.count)],
            prompt=job.prompt,
            extras={"points": cost, "family": job.family, **job.extras},
            timeout=config.liblib_timeout_seconds,
        )
        return envelope(0, "", {"generateUuid": task.id})

    async def status(self, request: web.Request) -> web.StreamResponse:
        """Any of the four status paths; each answers the tasks of its lines (`status_kinds`)."""
        state = self.state
        try:
            access_key = self._verify(request)
            state.count(PROVIDER, access_key, "polls")
            body = await self._body(request)
            task_id = body.get("generateUuid") if isinstance(body, dict) else None
            if not task_id or not isinstance(task_id, str):
                raise missing("generateUuid")
            task = state.find(PROVIDER, task_id, access_key)
            if task is None or task.kind not in status_kinds(request.path):
                raise LiblibError(100051, "task does not exist")
        except LiblibError as exc:
            return self._answer(exc)
        return self._render(request, task, state.account(PROVIDER, access_key))

    def _render(self, request: web.Request, task: SimTask, account: Account) -> web.Response:
        now = time.monotonic()
        status = generate_status(self.state, task, now)
        data: dict[str, Any] = {
            "generateUuid": task.id,
            "generateStatus": status,
            "percentCompleted": 0.0
            if status == 1
            else 1.0
            if status >= 5
            else round(min(task.progress(now), 0.99), 2),
            "generateMsg": "",
            "pointsCost": int(task.extras.get("points", 0)),
            "accountBalance": self.state.balance(account),
            "images": [],
        }
        if status < 5:
            return envelope(0, "", data)
        outcome = self.state.outcome(task)
        if outcome.kind == "moderation" and outcome.variant not in ("audit", "audit_listed"):
            data["generateMsg"] = "sensitive content in result"
            return envelope(100055, "sensitive content in result", data)
        if outcome.kind == "status7":
            data["generateMsg"] = "generation timed out, points refunded"
        elif status == 6:
            data["generateMsg"] = "generation failed"
        else:
            blocked = frozenset(range(task.count)) if outcome.kind == "moderation" else outcome.failed
            if blocked:
                data["generateMsg"] = f"{len(blocked)} image(s) blocked by review"
            data["images"] = self._images(request, task, blocked, outcome.variant == "audit_listed")
        return envelope(0, "", data)

    def _images(
        self, request: web.Request, task: SimTask, blocked: frozenset[int], listed: bool
    ) -> list[dict[str, Any]]:
        """The `images` of a finished task: approved ones, and blocked ones too (auditStatus 4) when `listed`.
        ComfyUI images also name the node and output that made them."""
        base = self.state.image_base(request)
        expires = int(task.wall(task.ends)) + URL_LIFETIME
        noise = self.state.config.image_fill == "noise"
        output: dict[str, Any] = {}
        if task.kind == "comfy":
            output = {"nodeId": task.extras["node_id"], "outputName": task.extras["output_name"]}
        images: list[dict[str, Any]] = []
        for index, seed in enumerate(task.seeds):
            if index in blocked:
                if listed:
                    images.append({"imageUrl": "", "seed": seed, "auditStatus": 4, **output})
                continue  # by default blocked images (auditStatus 4) are left out
            name = ImageName(PROVIDER, task.id, index, task.width, task.height, fill_for(seed, noise))
            url = f"{base}/_sim/images/{name.render()}?Expires={expires}"
            images.append({"imageUrl": url, "seed": seed, "auditStatus": 3, **output})
        return images
