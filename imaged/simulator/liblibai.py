"""The LiblibAI open API, as providers.md §2 describes it: signed POST requests, `{code, msg, data}` envelope,
generateStatus 1..7, auditStatus, points and balance, and the per-account caps.

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
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from aiohttp import web

from .faults import retry_after_header
from .images import ImageName, fill_for
from .state import Account, SimState, SimTask

PROVIDER: Final = "liblibai"
SIGNATURE_WINDOW_MS = 5 * 60 * 1000
URL_LIFETIME = 7 * 24 * 3600
STAR3_T2I = "/api/generate/webui/text2img/ultra"
STAR3_I2I = "/api/generate/webui/img2img/ultra"
CUSTOM_T2I = "/api/generate/webui/text2img"
CUSTOM_I2I = "/api/generate/webui/img2img"
WEBUI_STATUS = "/api/generate/webui/status"
COMFY_APP = "/api/generate/comfyui/app"
COMFY_STATUS = "/api/generate/comfy/status"
F1_CHECKPOINT = "412b427ddb674b4dbab9e5abd5ae6057"
ASPECT_RATIOS = {"square": (1024, 1024), "portrait": (768, 1024), "landscape": (1280, 720)}
CONTROL_TYPES = frozenset({"line", "depth", "pose", "IPAdapter", "subject"})
POINTS_PER_IMAGE = {"star3": 10, "f1": 8, "sd": 6, "comfy": 12}
HTTP_CODES = frozenset({401, 403, 429})
"""Codes that may arrive as an HTTP status (see SimulatorConfig.liblib_error_style); the rest are envelopes."""


class Template(NamedTuple):
    path: str
    family: str  # "star3" | "f1" | "sd"
    img2img: bool


TEMPLATES = {
    "5d7e67009b344550bc1aa6ccbfa1d7f4": Template(STAR3_T2I, "star3", False),
    "07e00af4fc464c7ab55ff906f8acf1b7": Template(STAR3_I2I, "star3", True),
    "6f7c4652458d4802969f8d089cf5b91f": Template(CUSTOM_T2I, "f1", False),
    "63b72710c9574457ba303d9d9b8df8bd": Template(CUSTOM_I2I, "f1", True),
    "e10adc3949ba59abbe56e057f20f883e": Template(CUSTOM_T2I, "sd", False),
    "9c7d531dc75f476aa833b3d452b8f7ad": Template(CUSTOM_I2I, "sd", True),
}


def sign(secret: str, path: str, timestamp: str, nonce: str) -> str:
    """URL-safe base64 (no `=` padding) of HMAC-SHA1(secret, "path&timestamp&nonce")."""
    digest = hmac.new(secret.encode(), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class LiblibError(Exception):
    """A LiblibAI error answer: an envelope code and message."""

    def __init__(self, code: int, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.retry_after = retry_after


def envelope(
    code: int = 0, msg: str = "", data: Any = None, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"code": code, "msg": msg, "data": data}, status=status, headers=headers)


def fault_error(status: int, retry_after: float | None) -> web.StreamResponse:
    """LiblibAI's answer to an injected HTTP 429 or 500."""
    if status == 429:
        return envelope(429, "too many requests", None, 429, retry_after_header(retry_after))
    return envelope(200000, "internal error", None, 500)


@dataclass
class Job:
    """A validated generation request."""

    kind: str  # "webui" | "comfy"
    family: str  # "star3" | "f1" | "sd" | "comfy"
    template: str
    prompt: str
    width: int
    height: int
    count: int
    seed: int | None


# validation helpers: a missing required field is 100050, a present but wrong one is 100000 -----------------------


def _missing(name: str) -> LiblibError:
    return LiblibError(100050, f"parameter completeness check failed: {name} is required")


def _invalid(name: str, why: str) -> LiblibError:
    return LiblibError(100000, f"invalid parameters: {name} {why}")


def _int(params: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(name, f"must be an integer in [{low}, {high}]")
    return value


def _number(params: dict[str, Any], name: str, low: float, high: float) -> None:
    value = params.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(name, f"must be a number in [{low}, {high}]")


def _text(params: dict[str, Any], name: str, *, required: bool, limit: int = 2000) -> str:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return ""
    if not isinstance(value, str):
        raise _invalid(name, "must be a string")
    if len(value) > limit:
        raise _invalid(name, f"must be at most {limit} characters")
    return value


def _url(params: dict[str, Any], name: str) -> None:
    """An input image must be a public http(s) URL; the emulator never fetches it."""
    value = _text(params, name, required=True, limit=4096)
    if not value.startswith(("http://", "https://")):
        raise _invalid(name, "must be a public http(s) URL")


def parse_submit(body: Any, path: str) -> Job:
    """Check a submit body for the endpoint `path`; raises LiblibError with the real codes."""
    if not isinstance(body, dict):
        raise LiblibError(100000, "invalid parameters: the body must be a JSON object")
    template = body.get("templateUuid")
    if template is None or template == "":
        raise _missing("templateUuid")
    if not isinstance(template, str):
        raise _invalid("templateUuid", "must be a string")
    params = body.get("generateParams")
    if params is None:
        raise _missing("generateParams")
    if not isinstance(params, dict):
        raise _invalid("generateParams", "must be a JSON object")
    if path == COMFY_APP:
        return Job("comfy", "comfy", template, "", 1024, 1024, 1, None)
    found = TEMPLATES.get(template)
    if found is None or found.path != path:
        raise LiblibError(100120, f"template does not exist: {template}")
    if found.family == "star3":
        return _star3(params, template, found.img2img)
    return _custom(params, template, found)


def _star3(params: dict[str, Any], template: str, img2img: bool) -> Job:
    prompt = _text(params, "prompt", required=True)
    size = params.get("imageSize")
    if size is not None:
        if not isinstance(size, dict):
            raise _invalid("imageSize", "must be an object {width, height}")
        width = _int(size, "width", 512, 2048)
        height = _int(size, "height", 512, 2048)
        if width is None or height is None:
            raise _missing("imageSize.width and imageSize.height")
    elif "aspectRatio" in params:
        ratio = params["aspectRatio"]
        if ratio not in ASPECT_RATIOS:
            raise _invalid("aspectRatio", f"must be one of {', '.join(ASPECT_RATIOS)}")
        width, height = ASPECT_RATIOS[ratio]
    else:
        raise _missing("aspectRatio or imageSize")
    if params.get("imgCount") is None:
        raise _missing("imgCount")
    count = _int(params, "imgCount", 1, 4)
    _int(params, "steps", 1, 60)
    control = params.get("controlnet")
    if control is not None:
        if not isinstance(control, dict) or control.get("controlType") not in CONTROL_TYPES:
            raise _invalid("controlnet.controlType", f"must be one of {', '.join(sorted(CONTROL_TYPES))}")
        _url(control, "controlImage")
    if img2img:
        _url(params, "sourceImage")
    return Job(
        "webui", "star3", template, prompt, width, height, count or 1, _int(params, "seed", -1, 9999999999)
    )


def _custom(params: dict[str, Any], template: str, found: Template) -> Job:
    checkpoint = _text(params, "checkPointId", required=found.family == "sd", limit=64) or F1_CHECKPOINT
    del checkpoint  # any id is accepted: the emulator has every model
    prompt = _text(params, "prompt", required=True)
    _text(params, "negativePrompt", required=False)
    width = _int(params, "width", 128, 1536, 512) or 512
    height = _int(params, "height", 128, 1536, 512) or 512
    count = _int(params, "imgCount", 1, 4, 1) or 1
    _int(params, "steps", 1, 60)
    _int(params, "clipSkip", 1, 12)
    _int(params, "sampler", 0, 100)
    _int(params, "randnSource", 0, 1)
    _int(params, "restoreFaces", 0, 1)
    _number(params, "cfgScale", 1.0, 15.0)
    seed = _int(params, "seed", -1, 9999999999)
    networks = params.get("additionalNetwork")
    if networks is not None:
        if not isinstance(networks, list) or len(networks) > 5:
            raise _invalid("additionalNetwork", "must be a list of at most 5 {modelId, weight}")
        for network in networks:
            if not isinstance(network, dict) or not isinstance(network.get("modelId"), str):
                raise _invalid("additionalNetwork.modelId", "must be a string")
            _number(network, "weight", -4.0, 4.0)
    hires = params.get("hiResFixInfo")
    if hires is not None:
        if not isinstance(hires, dict):
            raise _invalid("hiResFixInfo", "must be an object")
        width = _int(hires, "resizedWidth", 128, 2048, width) or width
        height = _int(hires, "resizedHeight", 128, 2048, height) or height
    if found.img2img:
        _url(params, "sourceImage")
        _int(params, "mode", 0, 4)
        if params.get("mode") not in (None, 0, 4):
            raise _invalid("mode", "must be 0 (img2img) or 4 (inpaint)")
        _number(params, "denoisingStrength", 0.0, 1.0)
        width = _int(params, "resizedWidth", 128, 1536, width) or width
        height = _int(params, "resizedHeight", 128, 1536, height) or height
    return Job("webui", found.family, template, prompt, width, height, count, seed)


def generate_status(state: SimState, task: SimTask, now: float, *, peek: bool = False) -> int:
    """The task's generateStatus at `now`: 1 waiting, 2 running, 3 generated, 4 reviewing, then 5, 6 or 7.

    ``peek`` (stats) never draws an outcome: a finished task nobody has polled yet counts as 5.
    """
    if not task.finished(now):
        progress = task.progress(now)
        return 1 if progress < 0.1 else 2 if progress < 0.8 else 3 if progress < 0.9 else 4
    if peek and task.outcome is None:
        return 5
    outcome = state.outcome(task)
    if outcome.kind == "fail":
        return 6
    if outcome.kind == "status7":
        return 7
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
        return [
            *(web.post(path, submit) for path in (STAR3_T2I, STAR3_I2I, CUSTOM_T2I, CUSTOM_I2I, COMFY_APP)),
            web.post(WEBUI_STATUS, guard(PROVIDER, "poll", self.webui_status, fault_error)),
            web.post(COMFY_STATUS, guard(PROVIDER, "poll", self.comfy_status, fault_error)),
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
        try:
            access_key = self._verify(request)
            if not state.submit_allowed(PROVIDER, access_key):
                raise LiblibError(429, "too many requests: submit endpoints allow 1 request per second", 1.0)
            try:
                job = parse_submit(await self._body(request), request.path)
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
            extras={"points": cost},
        )
        return envelope(0, "", {"generateUuid": task.id})

    async def webui_status(self, request: web.Request) -> web.StreamResponse:
        return await self._status(request, "webui")

    async def comfy_status(self, request: web.Request) -> web.StreamResponse:
        return await self._status(request, "comfy")

    async def _status(self, request: web.Request, kind: str) -> web.StreamResponse:
        state = self.state
        try:
            access_key = self._verify(request)
            state.count(PROVIDER, access_key, "polls")
            body = await self._body(request)
            task_id = body.get("generateUuid") if isinstance(body, dict) else None
            if not task_id or not isinstance(task_id, str):
                raise _missing("generateUuid")
            task = state.find(PROVIDER, task_id, access_key)
            if task is None or task.kind != kind:
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
        if status == 6:
            data["generateMsg"] = "generation failed"
        elif status == 7:
            data["generateMsg"] = "generation timed out, points refunded"
        else:
            blocked = frozenset(range(task.count)) if outcome.kind == "moderation" else outcome.failed
            if blocked:
                data["generateMsg"] = f"{len(blocked)} image(s) blocked by review"
            base = self.state.image_base(request)
            expires = int(task.wall(task.ends)) + URL_LIFETIME
            noise = self.state.config.image_fill == "noise"
            for index, seed in enumerate(task.seeds):
                if index in blocked:
                    if outcome.variant == "audit_listed":
                        data["images"].append({"imageUrl": "", "seed": seed, "auditStatus": 4})
                    continue  # by default blocked images (auditStatus 4) are left out
                name = ImageName(
                    PROVIDER, task.id, index, task.width, task.height, fill_for(seed, noise)
                ).render()
                url = f"{base}/_sim/images/{name}?Expires={expires}"
                data["images"].append({"imageUrl": url, "seed": seed, "auditStatus": 3})
        return envelope(0, "", data)
