"""aiohttp's HTTP/1.1 server made safe for untrusted clients: read deadlines for request headers and bodies, and
oversize or malformed requests refused in the API's JSON envelope.

Why: aiohttp (3.10 to 3.14) has no deadline for reading a request. Its keep-alive timer closes a connection only
while it waits for the *next* request, and up to 3.14.3 it is not armed until a first request has been answered,
so a slowloris client that sends a request line and then one header byte every few seconds holds a connection (and
its task) for as long as it likes; a body announced with Content-Length and sent slowly is waited for without end
too. A request line or header over the parser's limit gets aiohttp's plain-text 400 whose body echoes the first
100 bytes of the offending line (a bearer token, say), and an ERROR traceback in the log.

How, with the least invasive mechanism for each concern:

* limits aiohttp already has (``max_line_size``, ``max_field_size``, ``max_headers``, ``keepalive_timeout``) go in
  as the documented runner keyword arguments (the handler arguments);
* there is no knob for the rest, and aiohttp always builds its own connection protocol (``Server.__call__``
  instantiates ``RequestHandler``), so :class:`GuardedAppRunner` overrides ``_make_server`` (the runner's factory
  hook) to take the Server aiohttp built (startup signals, handler arguments, access log: all aiohttp's own) and
  re-create it as a :class:`web.Server` subclass whose protocol is :class:`_GuardedProtocol`. That protocol adds two
  timers and answers parser errors itself (``handle_error``); every request the parser accepts takes aiohttp's
  normal path, so routing, middlewares and keep-alive do not change.

Status codes of a refused request: 414 for a request line over ``max_line_size``, 431 for a header line over
``max_field_size`` or more than ``max_headers`` headers, 400 for anything else the parser rejects; the message is
fixed (never a byte of the request) and the connection closes. A header deadline missed after part of a request
arrived answers 408; an idle connection is just closed. A body deadline missed answers 408 through the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

__all__ = ["BodyTimeout", "GuardedAppRunner", "HttpLimits", "make_runner"]

log = logging.getLogger(__name__)

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]

# Which line was too long, from LineTooLong's first argument. aiohttp 3.13.4 and later quote the line's start:
# a request target ("/..." from the C parser, "GET /..." from the pure-Python one) means the request line. Earlier
# versions name the line ("Status line is too long", "Header value is too long"). Only used to pick the status
# code: the bytes are never sent or logged. (Under the C parser a header *value* starting with "/" reads as a
# request line: such a request gets 414 instead of 431, refused all the same.)
_REQUEST_LINE = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+ )?/")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How long and how much an HTTP client may take to send a request.

    ``header_timeout_s`` runs from the connection's opening until the first request's headers are complete, and on
    a kept-alive connection from the first byte of each further request (the idle time before that byte is
    ``keepalive_timeout``'s). ``body_timeout_s`` runs from the moment a request is handed to its handler until its
    whole body has arrived. ``keepalive_timeout`` closes a connection left idle after a response (aiohttp's own
    timer; releases after 3.14.3 also run it from the opening, so there the first request's headers get the shorter
    of the two). The sizes are aiohttp's parser limits, in bytes per line and headers per request (aiohttp
    enforces ``max_headers`` from 3.13.4 on).
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100
    keepalive_timeout: float = 15.0

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"HttpLimits.{field.name} must be positive")

    def handler_args(self) -> dict[str, Any]:
        """The limits aiohttp enforces itself, as runner keyword arguments."""
        return {
            "keepalive_timeout": self.keepalive_timeout,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
        }


def _envelope_text(message: str) -> str:
    return json.dumps({"success": False, "message": message, "results": None}, ensure_ascii=False)


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return str(peername) if peername else "unknown"


class BodyTimeout(web.HTTPRequestTimeout):
    """408 in the envelope, raised by every read of a request body that did not arrive within ``body_timeout_s``.

    An HTTPException, so the API's error middleware answers it as any other 4xx, and aiohttp sends it as it is
    when no middleware catches it. Its connection closes after the answer (the rest of the body is not read).
    """

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            text=_envelope_text(f"request body not received within {timeout_s:g} s"),
            content_type="application/json",
            headers={"Connection": "close"},
        )
        self.force_close()


def _is_request_line(fragment: object) -> bool:
    if isinstance(fragment, str):
        if fragment.lower().startswith(("status line", "request line")):
            return True
        fragment = fragment.encode("latin-1", "replace")
    return isinstance(fragment, bytes | bytearray) and _REQUEST_LINE.match(fragment) is not None


def _refusal(exc: HttpProcessingError, limits: HttpLimits) -> tuple[int, str, int]:
    """Status, fixed message and log level for a request the parser rejected; nothing of the request in them."""
    if isinstance(exc, LineTooLong):
        if _is_request_line(exc.args[0] if exc.args else b""):
            return 414, f"request line too long: the limit is {limits.max_line_size} bytes", logging.WARNING
        return 431, f"request header too large: the limit is {limits.max_field_size} bytes", logging.WARNING
    if "too many headers" in exc.message.lower():
        return 431, f"too many request headers: the limit is {limits.max_headers}", logging.WARNING
    return 400, "malformed HTTP request", logging.INFO


class _GuardedProtocol(web.RequestHandler):
    """aiohttp's connection protocol with a header deadline, a body deadline and quiet, envelope-shaped refusals.

    Header deadline: armed when the connection opens and, on a kept-alive connection, by the first byte received
    after the previous request's body was complete; disarmed when a request is handed to its handler. When it
    fires while aiohttp still waits for a request's headers (``_waiter`` pending: the test aiohttp's own keep-alive
    timer makes) the connection closes, with a 408 if part of a request arrived. When it fires while an earlier
    request is still being served it is dropped: bytes queued behind that request are bounded by the keep-alive
    timer aiohttp starts after the response.

    Body deadline: armed when a request with a body is handed to its handler, disarmed when the handler returns.
    When it fires before the body is complete, the payload stream fails with :class:`BodyTimeout` (waking a read
    in progress), is marked at EOF (so aiohttp does not linger reading the rest) and the connection is marked to
    close after the answer.
    """

    __slots__ = (
        "_body_timed_out",
        "_body_timer",
        "_guard_loop",
        "_head_started",
        "_header_timer",
        "_limits",
        "_payload",
    )

    def __init__(
        self, manager: web.Server, limits: HttpLimits, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._limits = limits
        self._guard_loop = loop
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # a byte of the awaited request has arrived
        self._body_timer: asyncio.TimerHandle | None = None
        self._payload: StreamReader | None = None  # the body of the last request handed to a handler
        self._body_timed_out = False

    # -- aiohttp's protocol hooks ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self._body_timed_out:
            if self._header_timer is None and (self._payload is None or self._payload.is_eof()):
                # The previous request's body is complete: these bytes begin the next request.
                self._arm_header_timer()
            if self._header_timer is not None:
                self._head_started = True
        super().data_received(data)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Parser errors come here as status 400 with the parser's exception; handler failures keep aiohttp's path.
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        code, reason, level = _refusal(exc, self._limits)
        log.log(level, "HTTP request refused from %s: %s", _peer(self.transport), reason)
        if request.writer.output_size > 0:  # as aiohttp: a response already started cannot be replaced
            raise ConnectionError("response already started; cannot send the refusal")
        response = web.Response(
            status=code,
            text=_envelope_text(reason),
            content_type="application/json",
            headers={"Connection": "close"},
        )
        response.force_close()
        return response

    # -- called by _GuardedServer ---------------------------------------------------------------------------------

    def request_started(self, payload: StreamReader) -> None:
        """A request's headers are in and it goes to its handler: stop the header clock, start the body clock."""
        self._cancel_header_timer()
        self._payload = payload
        if not payload.is_eof():
            self._body_timer = self._guard_loop.call_later(self._limits.body_timeout_s, self._body_deadline)

    def request_finished(self, response: web.StreamResponse | None) -> None:
        self._cancel_body_timer()
        if response is not None and self._body_timed_out:
            response.force_close()

    # -- timers ---------------------------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._head_started = False
        self._header_timer = self._guard_loop.call_later(self._limits.header_timeout_s, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        waiter = self._waiter  # pending while aiohttp's request loop waits for a complete request
        if waiter is None or waiter.done():
            return  # an earlier request is still being served
        timeout_s = self._limits.header_timeout_s
        if self._head_started:
            log.info(
                "HTTP connection from %s closed: request headers not complete within %g s",
                _peer(transport),
                timeout_s,
            )
            # Nothing else is being written: the previous response is complete and this request has none yet.
            body = _envelope_text(f"request headers not received within {timeout_s:g} s").encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\n"
                "Content-Type: application/json; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            transport.write(head.encode("ascii") + body)
        else:
            log.debug("HTTP connection from %s closed: no request within %g s", _peer(transport), timeout_s)
        self.force_close()  # closes the transport once the 408 is flushed

    def _body_deadline(self) -> None:
        self._body_timer = None
        payload = self._payload
        if payload is None or payload.is_eof():
            return
        self._body_timed_out = True
        timeout_s = self._limits.body_timeout_s
        log.info(
            "HTTP request from %s: body not received within %g s; answering 408 and closing",
            _peer(self.transport),
            timeout_s,
        )
        self.close()  # no further request on this connection; the rest of the body is ignored
        payload.set_exception(BodyTimeout(timeout_s))
        payload.feed_eof()  # else aiohttp's lingering read after the response would raise it again


class _GuardedServer(web.Server):
    """aiohttp's Server rebuilt from the one the application made, with :class:`_GuardedProtocol` connections.

    The request handler and request factory are wrapped to tell the protocol when a request starts and ends; the
    handler keyword arguments are aiohttp's (``_kwargs``: the runner's, the application's ``handler_args``, debug
    and access log), so everything aiohttp configured stays as it was.
    """

    def __init__(self, built: web.Server, limits: HttpLimits) -> None:
        self._limits = limits
        self._inner_handler: _Handler = built.request_handler
        self._inner_factory: _RequestFactory = built.request_factory
        super().__init__(
            self._handle,
            request_factory=self._make_request_guarded,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )

    def __call__(self) -> web.RequestHandler:
        return _GuardedProtocol(self, self._limits, loop=self._loop, **self._kwargs)

    def _make_request_guarded(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if isinstance(protocol, _GuardedProtocol):
            protocol.request_started(payload)
        return self._inner_factory(message, payload, protocol, writer, task)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        guarded = protocol if isinstance(protocol, _GuardedProtocol) else None
        response: web.StreamResponse | None = None
        try:
            response = await self._inner_handler(request)
            return response
        finally:
            if guarded is not None:
                guarded.request_finished(response)


class GuardedAppRunner(web.AppRunner):
    """A :class:`web.AppRunner` whose server applies :class:`HttpLimits`; use it exactly like an AppRunner."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: HttpLimits, **kwargs: Any) -> None:
        handler_args = limits.handler_args()
        clash = sorted(set(kwargs) & set(handler_args))
        if clash:
            raise TypeError(f"set {', '.join(clash)} in HttpLimits, not as runner arguments")
        super().__init__(app, **kwargs, **handler_args)
        self._limits = limits

    @property
    def limits(self) -> HttpLimits:
        return self._limits

    async def _make_server(self) -> web.Server:
        # aiohttp runs the startup signals, freezes the app and builds its Server; we only swap the protocol.
        return _GuardedServer(await super()._make_server(), self._limits)


def make_runner(app: web.Application, limits: HttpLimits | None = None, **kwargs: Any) -> web.AppRunner:
    """An AppRunner for ``app`` that applies ``limits`` (defaults: :class:`HttpLimits`); other keyword arguments
    are AppRunner's (``access_log=None``, ``shutdown_timeout``, ...)."""
    return GuardedAppRunner(app, limits if limits is not None else HttpLimits(), **kwargs)
