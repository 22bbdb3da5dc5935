"""LiblibAI request signing: the documented test vectors, freshness, and an independent implementation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string

from hypothesis import given
from hypothesis import strategies as st

from imaged.providers.liblibai import sign, signed_query

SECRET = "KppKsn7ezZxhi6lIDjbo7YyVYzanSu2d"
TIMESTAMP = 1725458584000
NONCE = "random1232"
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def reference_sign(path: str, secret_key: str, timestamp_ms: int, nonce: str) -> str:
    """The algorithm as documented, written differently: standard base64, then translate and strip by hand."""
    mac = hmac.new(bytes(secret_key, "utf-8"), digestmod=hashlib.sha1)
    mac.update(bytes(path, "utf-8"))
    mac.update(b"&")
    mac.update(bytes(str(timestamp_ms), "utf-8"))
    mac.update(b"&")
    mac.update(bytes(nonce, "utf-8"))
    standard = base64.b64encode(mac.digest()).decode("ascii")
    return "".join({"+": "-", "/": "_", "=": ""}.get(char, char) for char in standard)


def test_status_vector() -> None:
    assert sign("/api/generate/webui/status", SECRET, TIMESTAMP, NONCE) == "Ld0hlMpTjSKvOWxx9qy-ytOVt9I"


def test_text2img_ultra_vector() -> None:
    assert (
        sign("/api/generate/webui/text2img/ultra", SECRET, TIMESTAMP, NONCE) == "1RdKCvqD5opIko-BYvo6siyLowk"
    )


def test_reference_matches_vectors() -> None:
    assert (
        reference_sign("/api/generate/webui/status", SECRET, TIMESTAMP, NONCE)
        == "Ld0hlMpTjSKvOWxx9qy-ytOVt9I"
    )


def test_signature_is_url_safe_without_padding() -> None:
    for i in range(200):
        signature = sign(f"/api/path/{i}", SECRET, TIMESTAMP + i, f"nonce{i}")
        assert URL_SAFE.match(signature), signature
        assert len(signature) == 27  # 20-byte SHA-1 digest, base64 without the one "=" of padding


def test_signed_query_is_fresh_per_request() -> None:
    first = signed_query("/api/generate/webui/status", "ak", SECRET)
    second = signed_query("/api/generate/webui/status", "ak", SECRET)
    assert set(first) == {"AccessKey", "Signature", "Timestamp", "SignatureNonce"}
    assert first["AccessKey"] == "ak"
    assert first["SignatureNonce"] != second["SignatureNonce"]
    assert first["Signature"] != second["Signature"]
    for query in (first, second):
        assert len(query["SignatureNonce"]) >= 16
        assert query["Timestamp"].isdigit() and len(query["Timestamp"]) == 13  # milliseconds
        assert query["Signature"] == sign(
            "/api/generate/webui/status", SECRET, int(query["Timestamp"]), query["SignatureNonce"]
        )


def test_signed_query_with_fixed_inputs_reproduces_the_vector() -> None:
    query = signed_query("/api/generate/webui/status", "ak", SECRET, timestamp_ms=TIMESTAMP, nonce=NONCE)
    assert query == {
        "AccessKey": "ak",
        "Signature": "Ld0hlMpTjSKvOWxx9qy-ytOVt9I",
        "Timestamp": str(TIMESTAMP),
        "SignatureNonce": NONCE,
    }


def test_signature_is_bound_to_the_path() -> None:
    assert sign("/api/generate/webui/status", SECRET, TIMESTAMP, NONCE) != sign(
        "/api/generate/webui/status/", SECRET, TIMESTAMP, NONCE
    )


@given(
    path=st.text(alphabet=string.ascii_letters + string.digits + "/_-.", min_size=1, max_size=80).map(
        lambda p: "/" + p
    ),
    secret=st.text(min_size=1, max_size=64),
    timestamp=st.integers(min_value=0, max_value=10**14),
    nonce=st.text(min_size=1, max_size=40),
)
def test_sign_agrees_with_an_independent_implementation(
    path: str, secret: str, timestamp: int, nonce: str
) -> None:
    signature = sign(path, secret, timestamp, nonce)
    assert signature == reference_sign(path, secret, timestamp, nonce)
    assert URL_SAFE.match(signature)
