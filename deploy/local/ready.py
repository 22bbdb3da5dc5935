"""Protocol-level readiness probe for the local services (standard library only).

Usage:
    ready.py amqp|mongo HOST PORT [--wait SECONDS] [--pid PID]
    ready.py s3 HOST PORT --access-key KEY --secret-key SECRET [--region R]
             [--bucket NAME [--create-bucket]] [--wait SECONDS] [--pid PID]

Exit status:
    0  the server answered a real protocol handshake
    1  nothing answered (connection refused / timed out) before the deadline
    2  something answered on the port, but not with the expected protocol
    3  the process given by --pid exited while we were waiting
    4  (s3 with --bucket, without --create-bucket) the server accepts our keys, but the bucket is missing

AMQP: sends the AMQP 0-9-1 protocol header and expects a Connection.Start
method frame (frame type 1, class 10, method 10).
MongoDB: sends an OP_MSG ``{hello: 1, $db: "admin"}`` and expects ``ok: 1``.
S3: sends a ListBuckets request signed with AWS Signature V4 (path-style, no payload) and expects a
``ListAllMyBucketsResult``; a refusal of the keys counts as "not our server" (2), a 5xx as "not ready
yet" (1). With --bucket it checks the bucket is listed; with --create-bucket it creates it when missing
(CreateBucket is idempotent for its owner) and confirms it with HeadBucket.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import hmac
import http.client
import os
import socket
import struct
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
OP_MSG = 2013
IO_TIMEOUT_S = 3.0


class WrongProtocol(Exception):
    """The peer answered, but not as the expected server would."""


class NotReady(Exception):
    """The expected server answered, but says it cannot serve yet (e.g. an S3 5xx during startup)."""


class BucketMissing(Exception):
    """The S3 server accepts our keys, but the bucket does not exist (and we were not asked to create it)."""


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


# --- S3 -----------------------------------------------------------------------

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Probe:
    """Minimal path-style S3 client for requests without a payload, signed with AWS Signature V4."""

    def __init__(self, host: str, port: int, access_key: str, secret_key: str, region: str) -> None:
        self.host, self.port = host, port
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.server = ""

    def _headers(self, method: str, path: str) -> dict[str, str]:
        now = datetime.datetime.now(datetime.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = f"{self.host}:{self.port}"
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = "\n".join(
            [
                method,
                path,
                "",
                f"host:{host}",
                f"x-amz-content-sha256:{EMPTY_SHA256}",
                f"x-amz-date:{amz_date}",
                "",
                signed,
                EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Host": host,
            "X-Amz-Date": amz_date,
            "X-Amz-Content-Sha256": EMPTY_SHA256,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}",
            "Content-Length": "0",
        }

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=IO_TIMEOUT_S)
        try:
            conn.connect()  # failing here means nothing is listening (OSError propagates)
            try:
                conn.request(method, path, headers=self._headers(method, path))
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise WrongProtocol(
                    f"no HTTP reply to {method} {path} ({type(exc).__name__}: {exc})"
                ) from exc
            self.server = resp.getheader("Server") or self.server
            return resp.status, body
        finally:
            conn.close()


def _xml(body: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _s3_error(status: int, body: bytes, what: str) -> Exception:
    """The exception for an unexpected S3 reply: NotReady for 5xx, else WrongProtocol."""
    root = _xml(body)
    code = ""
    if root is not None and _local(root.tag) == "Error":
        code = next((e.text or "" for e in root if _local(e.tag) == "Code"), "")
    detail = f"{what}: HTTP {status}" + (f" {code}" if code else "")
    if status >= 500:
        return NotReady(detail)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
        return WrongProtocol(f"{detail} (an S3 server that does not accept our keys)")
    if root is None or not code:
        return WrongProtocol(f"{detail} (not an S3 reply)")
    return WrongProtocol(detail)


def probe_s3(
    host: str,
    port: int,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    bucket: str | None = None,
    create_bucket: bool = False,
) -> str:
    s3 = S3Probe(host, port, access_key, secret_key, region)
    status, body = s3.request("GET", "/")
    root = _xml(body)
    if status != 200 or root is None or _local(root.tag) != "ListAllMyBucketsResult":
        if status == 200:
            raise WrongProtocol("ListBuckets: HTTP 200 without a ListAllMyBucketsResult (not an S3 server)")
        raise _s3_error(status, body, "ListBuckets")
    names = {
        (e.text or "") for b in root.iter() if _local(b.tag) == "Bucket" for e in b if _local(e.tag) == "Name"
    }
    info = f"S3 ListBuckets ok ({s3.server or 'unknown server'})"
    if not bucket:
        return info
    if bucket in names:
        return f"{info}, bucket {bucket} present"
    if not create_bucket:
        raise BucketMissing(f"bucket {bucket} does not exist")
    status, body = s3.request("PUT", f"/{bucket}")
    if status != 200:
        err = _s3_error(status, body, f"CreateBucket {bucket}")
        if status != 409 or b"BucketAlreadyOwnedByYou" not in body:  # 409 "owned by you": created meanwhile
            raise err
    status, body = s3.request("HEAD", f"/{bucket}")
    if status != 200:
        raise _s3_error(status, body, f"HeadBucket {bucket}")
    return f"{info}, bucket {bucket} created"


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
    parser.add_argument("kind", choices=("amqp", "mongo", "s3"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    parser.add_argument("--pid", type=int, default=0, help="give up early if this process exits")
    parser.add_argument("-q", "--quiet", action="store_true")
    s3_opts = parser.add_argument_group("s3")
    s3_opts.add_argument("--access-key", default="")
    s3_opts.add_argument("--secret-key", default="")
    s3_opts.add_argument("--region", default="us-east-1")
    s3_opts.add_argument("--bucket", default="", help="require this bucket")
    s3_opts.add_argument("--create-bucket", action="store_true", help="create the --bucket if it is missing")
    args = parser.parse_args(argv)

    probe: Callable[[str, int], str]
    if args.kind == "s3":
        if not (args.access_key and args.secret_key):
            parser.error("s3 needs --access-key and --secret-key")
        probe = functools.partial(
            probe_s3,
            access_key=args.access_key,
            secret_key=args.secret_key,
            region=args.region,
            bucket=args.bucket or None,
            create_bucket=args.create_bucket,
        )
    else:
        probe = probe_amqp if args.kind == "amqp" else probe_mongo
    deadline = time.monotonic() + args.wait
    last = "no attempt"
    while True:
        try:
            info = probe(args.host, args.port)
        except WrongProtocol as exc:
            last = f"wrong protocol: {exc}"
            code = 2
        except NotReady as exc:
            last = f"not ready: {exc}"
            code = 1
        except BucketMissing as exc:
            last = str(exc)
            code = 4
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
