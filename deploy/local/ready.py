"""Protocol-level readiness probe for the local services (standard library only).

Usage:
    ready.py amqp|mongo HOST PORT [--wait SECONDS] [--pid PID]

Exit status:
    0  the server answered a real protocol handshake
    1  nothing answered (connection refused / timed out) before the deadline
    2  something answered on the port, but not with the expected protocol
    3  the process given by --pid exited while we were waiting

AMQP: sends the AMQP 0-9-1 protocol header and expects a Connection.Start
method frame (frame type 1, class 10, method 10).
MongoDB: sends an OP_MSG ``{hello: 1, $db: "admin"}`` and expects ``ok: 1``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
OP_MSG = 2013
IO_TIMEOUT_S = 3.0


class WrongProtocol(Exception):
    """The peer answered, but not as the expected server would."""


def _connect(host: str, port: int) -> socket.socket:
    """Connect; failing here means nothing is listening (OSError propagates)."""
    return socket.create_connection((host, port), timeout=IO_TIMEOUT_S)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read n bytes; once connected, any failure means the peer is not the expected server."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError as exc:  # timeout, reset: something listens but does not answer properly
            raise WrongProtocol(f"no proper reply ({type(exc).__name__}: {exc})") from exc
        if not chunk:
            raise WrongProtocol(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


# --- AMQP -------------------------------------------------------------------


def probe_amqp(host: str, port: int) -> str:
    with _connect(host, port) as sock:
        sock.sendall(AMQP_HEADER)
        header = _recv_exact(sock, 7)
        if header.startswith(b"AMQP"):
            raise WrongProtocol(f"server rejected protocol header, proposes {header!r}")
        frame_type, channel, size = struct.unpack(">BHI", header)
        if frame_type != 1 or channel != 0 or size < 4 or size > 1 << 20:
            raise WrongProtocol(f"not an AMQP method frame: type={frame_type} size={size}")
        payload = _recv_exact(sock, size + 1)  # payload + frame-end octet
        if payload[-1] != 0xCE:
            raise WrongProtocol("missing AMQP frame-end octet")
        class_id, method_id = struct.unpack(">HH", payload[:4])
        if (class_id, method_id) != (10, 10):
            raise WrongProtocol(f"expected Connection.Start, got {class_id}.{method_id}")
        major, minor = payload[4], payload[5]
        return f"AMQP {major}-{minor} Connection.Start"


# --- MongoDB / minimal BSON ---------------------------------------------------


def _cstring(s: str) -> bytes:
    return s.encode() + b"\x00"


def bson_encode(doc: dict[str, object]) -> bytes:
    body = bytearray()
    for key, value in doc.items():
        if isinstance(value, bool):
            body += b"\x08" + _cstring(key) + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            body += b"\x10" + _cstring(key) + struct.pack("<i", value)
        elif isinstance(value, float):
            body += b"\x01" + _cstring(key) + struct.pack("<d", value)
        elif isinstance(value, str):
            raw = value.encode() + b"\x00"
            body += b"\x02" + _cstring(key) + struct.pack("<i", len(raw)) + raw
        else:
            raise TypeError(f"unsupported BSON value for {key!r}: {type(value).__name__}")
    return struct.pack("<i", len(body) + 5) + bytes(body) + b"\x00"


def bson_top_level_numbers(data: bytes) -> dict[str, float]:
    """Decode the numeric top-level fields of a BSON document, skipping the rest."""
    (total,) = struct.unpack_from("<i", data, 0)
    if total != len(data) or data[-1] != 0:
        raise WrongProtocol("malformed BSON document")
    out: dict[str, float] = {}
    pos = 4
    while pos < total - 1:
        etype = data[pos]
        end = data.index(b"\x00", pos + 1)
        key = data[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
        if etype == 0x01:  # double
            out[key] = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif etype == 0x10:  # int32
            out[key] = struct.unpack_from("<i", data, pos)[0]
            pos += 4
        elif etype == 0x12:  # int64
            out[key] = struct.unpack_from("<q", data, pos)[0]
            pos += 8
        elif etype in (0x02, 0x0D, 0x0E):  # string, js code, symbol
            pos += 4 + struct.unpack_from("<i", data, pos)[0]
        elif etype in (0x03, 0x04, 0x0F):  # document, array, code w/ scope
            pos += struct.unpack_from("<i", data, pos)[0]
        elif etype == 0x05:  # binary
            pos += 5 + struct.unpack_from("<i", data, pos)[0]
        elif etype == 0x07:  # ObjectId
            pos += 12
        elif etype == 0x08:  # bool
            out[key] = float(data[pos])
            pos += 1
        elif etype in (0x09, 0x11):  # datetime, timestamp
            pos += 8
        elif etype in (0x06, 0x0A, 0x7F, 0xFF):  # undefined, null, max/min key
            pass
        elif etype == 0x0B:  # regex: two cstrings
            pos = data.index(b"\x00", data.index(b"\x00", pos) + 1) + 1
        elif etype == 0x0C:  # DBPointer
            pos += 4 + struct.unpack_from("<i", data, pos)[0] + 12
        elif etype == 0x13:  # decimal128
            pos += 16
        else:
            raise WrongProtocol(f"unknown BSON element type 0x{etype:02x}")
    return out


def probe_mongo(host: str, port: int) -> str:
    body = struct.pack("<I", 0) + b"\x00" + bson_encode({"hello": 1, "$db": "admin"})
    request_id = os.getpid() & 0x7FFFFFFF
    msg = struct.pack("<iiii", 16 + len(body), request_id, 0, OP_MSG) + body
    with _connect(host, port) as sock:
        sock.sendall(msg)
        header = _recv_exact(sock, 16)
        length, _req, response_to, opcode = struct.unpack("<iiii", header)
        if opcode != OP_MSG or response_to != request_id or not 21 <= length <= 48 << 20:
            raise WrongProtocol(f"not a MongoDB OP_MSG reply (opcode={opcode}, length={length})")
        rest = _recv_exact(sock, length - 16)
    if rest[4] != 0:
        raise WrongProtocol("OP_MSG reply does not start with a body section")
    doc = rest[5:]
    (doc_len,) = struct.unpack_from("<i", doc, 0)
    fields = bson_top_level_numbers(doc[:doc_len])
    if fields.get("ok") != 1:
        raise WrongProtocol(f"hello did not return ok: 1 (ok={fields.get('ok')!r})")
    wire = fields.get("maxWireVersion")
    return f"MongoDB hello ok (maxWireVersion={wire:g})" if wire is not None else "MongoDB hello ok"


# --- main -------------------------------------------------------------------


def _say(message: str, *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(message + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as dead
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("amqp", "mongo"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    parser.add_argument("--pid", type=int, default=0, help="give up early if this process exits")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    probe = probe_amqp if args.kind == "amqp" else probe_mongo
    deadline = time.monotonic() + args.wait
    last = "no attempt"
    while True:
        try:
            info = probe(args.host, args.port)
        except WrongProtocol as exc:
            last = f"wrong protocol: {exc}"
            code = 2
        except (OSError, struct.error, ValueError, IndexError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            code = 1
        else:
            if not args.quiet:
                _say(f"{args.kind} {args.host}:{args.port}: {info}")
            return 0
        if args.pid and not _pid_alive(args.pid):
            if not args.quiet:
                _say(f"{args.kind} {args.host}:{args.port}: process {args.pid} exited ({last})", err=True)
            return 3
        if time.monotonic() >= deadline:
            if not args.quiet:
                _say(f"{args.kind} {args.host}:{args.port}: not ready ({last})", err=True)
            return code
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
