"""LiblibAI signature rejection through imaged's client: wrong key, stale timestamp, standard base64.

Each rejection has a control: the same request signed correctly (same timestamp and nonce where that matters) is
accepted, so the test proves that exactly the one defect is what the emulator rejects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import time

import pytest

from imaged.contract import ErrorCategory
from imaged.providers import liblibai
from imaged.providers.base import request_json

from .conftest import ClientFactory
from .harness import ACCESS_KEY, SECRET_KEY, WRONG_SECRET_KEY, Client, Emulator

pytestmark = pytest.mark.timeout(30)

C = ErrorCategory
MINUTE_MS = 60_000
STAR3_T2I = "/api/generate/webui/text2img/ultra"
BODY = {
    "templateUuid": "5d7e67009b344550bc1aa6ccbfa1d7f4",
    "generateParams": {"prompt": "a fox", "aspectRatio": "square", "imgCount": 1},
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def digest(path: str, secret: str, timestamp: int, nonce: str) -> bytes:
    """HMAC-SHA1 over ``path&timestamp&nonce``, written here apart from imaged's ``sign``."""
    return hmac.new(secret.encode(), f"{path}&{timestamp}&{nonce}".encode(), hashlib.sha1).digest()


def query(access_key: str, signature: str, timestamp: int, nonce: str) -> dict[str, str]:
    return {
        "AccessKey": access_key,
        "Signature": signature,
        "Timestamp": str(timestamp),
        "SignatureNonce": nonce,
    }


async def signature_failures(emu: Emulator) -> int:
    failures: int = (await emu.stats("liblibai"))["signature_failures"]
    return failures


@pytest.mark.parametrize("style", ["http", "envelope"])
async def test_wrong_secret_key_is_rejected(style: str, emu: Emulator, make_client: ClientFactory) -> None:
    await emu.configure(liblib_error_style=style)
    wrong = make_client("liblibai", secret_key=WRONG_SECRET_KEY)
    exc = await wrong.fails(wrong.submit, C.AUTH, retryable=False, code="401")
    assert exc.provider_status == (401 if style == "http" else 200)
    assert await signature_failures(emu) == 1

    right = make_client("liblibai")
    await right.submit()
    assert (await emu.stats("liblibai"))["submits"] == 1


@pytest.mark.parametrize(
    ("age_ms", "accepted"),
    [(10 * MINUTE_MS, False), (-10 * MINUTE_MS, False), (4 * MINUTE_MS, True)],
    ids=["10-minutes-old", "10-minutes-ahead", "4-minutes-old"],
)
async def test_timestamp_outside_five_minutes_is_rejected(
    age_ms: int, accepted: bool, emu: Emulator, make_client: ClientFactory
) -> None:
    """The client signs with a timestamp ``age_ms`` in the past (negative: in the future)."""
    client = make_client("liblibai")

    def aged(path: str, access_key: str, secret_key: str) -> dict[str, str]:
        timestamp, nonce = now_ms() - age_ms, secrets.token_hex(16)
        return query(access_key, liblibai.sign(path, secret_key, timestamp, nonce), timestamp, nonce)

    client.secrets.signer = aged
    if accepted:
        await client.submit()
        assert await signature_failures(emu) == 0
        return
    exc = await client.fails(client.submit, C.AUTH, retryable=False, code="401")
    assert "Timestamp" in exc.message
    assert await signature_failures(emu) == 1


async def test_stale_timestamp_in_a_plain_request(emu: Emulator, make_client: ClientFactory) -> None:
    """``liblibai.sign`` with a timestamp 10 minutes old, sent the way the client sends its requests and read
    with the client's own envelope check; the same request with a current timestamp is accepted."""
    client = make_client("liblibai")

    async def send(timestamp: int) -> dict[str, object]:
        nonce = f"contract-{timestamp}"
        signature = liblibai.sign(STAR3_T2I, SECRET_KEY, timestamp, nonce)
        client.secrets.values.add(signature)
        reply = await request_json(
            emu.session,
            "POST",
            f"{client.credential.base_url}{STAR3_T2I}",
            what="LiblibAI submit",
            timeout_s=5.0,
            params=query(ACCESS_KEY, signature, timestamp, nonce),
            json_body=BODY,
        )
        return liblibai.envelope_data(reply, "LiblibAI submit")

    exc = await client.fails(lambda: send(now_ms() - 10 * MINUTE_MS), C.AUTH, retryable=False, code="401")
    assert "Timestamp" in exc.message
    assert "generateUuid" in await send(now_ms())
    stats = await emu.stats("liblibai")
    assert (stats["signature_failures"], stats["submits"]) == (1, 1)


def _standard_and_url_safe(path: str, timestamp: int) -> tuple[str, str, str]:
    """A nonce whose signature has '-' or '_' in URL-safe base64 (so the standard form differs), and both forms."""
    for counter in itertools.count():
        nonce = f"contract{counter:08d}"
        raw = digest(path, SECRET_KEY, timestamp, nonce)
        url_safe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if "-" in url_safe or "_" in url_safe:
            return nonce, base64.b64encode(raw).decode(), url_safe
    raise AssertionError("unreachable")


@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
async def test_standard_base64_is_rejected(padding: bool, emu: Emulator, make_client: ClientFactory) -> None:
    client = make_client("liblibai")
    signed: dict[str, tuple[str, str, int]] = {}

    def standard(path: str, access_key: str, secret_key: str) -> dict[str, str]:
        timestamp = now_ms()
        nonce, plain, url_safe = _standard_and_url_safe(path, timestamp)
        assert url_safe == liblibai.sign(path, secret_key, timestamp, nonce)
        assert plain.rstrip("=") != url_safe and set(plain) & {"+", "/"}
        signed[path] = (nonce, url_safe, timestamp)
        client.secrets.values.add(url_safe)
        return query(access_key, plain if padding else plain.rstrip("="), timestamp, nonce)

    client.secrets.signer = standard
    exc = await client.fails(client.submit, C.AUTH, retryable=False, code="401")
    assert exc.provider_status == 401
    assert await signature_failures(emu) == 1

    # the control: the URL-safe form of the very same signature (same timestamp and nonce) is accepted
    nonce, url_safe, timestamp = signed[STAR3_T2I]
    client.secrets.signer = lambda path, access_key, secret_key: query(access_key, url_safe, timestamp, nonce)
    await client.submit()
    stats = await emu.stats("liblibai")
    assert (stats["signature_failures"], stats["submits"]) == (1, 1)


async def test_every_request_is_signed_afresh(emu: Emulator, make_client: ClientFactory) -> None:
    """A new nonce, a current timestamp and a signature bound to the path on each request."""
    client: Client = make_client("liblibai")
    await client.run(await client.submit())
    queries = client.secrets.queries
    assert len(queries) >= 2
    assert len({q["SignatureNonce"] for q in queries}) == len(queries)
    assert len({q["Signature"] for q in queries}) == len(queries)
    assert all(abs(int(q["Timestamp"]) - now_ms()) < MINUTE_MS for q in queries)
    assert all(len(q["SignatureNonce"]) >= 16 and q["AccessKey"] == ACCESS_KEY for q in queries)
    assert await signature_failures(emu) == 0
