"""Redaction: configured secrets whole and partly echoed, key-shaped tokens, settings, logging."""

from __future__ import annotations

import io
import json
import logging
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from imaged.logs import JsonFormatter, TextFormatter
from imaged.providers.aliyun import AliyunProvider
from imaged.providers.liblibai import LiblibProvider
from imaged.redact import MASK, MIN_SECRET_CHARS, RedactingFilter, Redactor
from imaged.settings import Settings

pytestmark = pytest.mark.timeout(30)

ALIYUN_KEY = "sk-4f9c2a7e1b3d4c5e8f90a1b2c3d4e5f6"
LIB_ACCESS = "LibAccess0123ABCDwxyz"
LIB_SECRET = "Ls3cr3t_9876zyxwVUTS"
AMQP_PASSWORD = "Rabbit-Pass-77"
JWT_SECRET = "jwt-signing-0123456789-abcdefghijklmnop"

SECRETS = [ALIYUN_KEY, LIB_ACCESS, LIB_SECRET, AMQP_PASSWORD, JWT_SECRET]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(SECRETS)


# ------------------------------------------------------------------------------------ configured secrets


@pytest.mark.parametrize("secret", SECRETS)
def test_a_configured_secret_is_replaced_wherever_it_occurs(redactor: Redactor, secret: str) -> None:
    text = f"first {secret}, then again ({secret}) and glued:x{secret}y and at the end {secret}"
    out = redactor.text(text)
    assert secret not in out
    assert out.count(MASK) >= 4
    assert out.startswith("first ")


def test_a_percent_encoded_secret_in_a_url_is_replaced() -> None:
    secret = "p@ss/w+rd=long"
    redactor = Redactor([secret])
    out = redactor.text("GET https://gw.example/v1?auth=p%40ss%2Fw%2Brd%3Dlong&x=1 failed")
    assert "p%40ss%2Fw%2Brd%3Dlong" not in out
    assert "x=1" in out


def test_empty_and_short_secrets_are_ignored() -> None:
    redactor = Redactor(["", "guest", "a" * (MIN_SECRET_CHARS - 1)])
    text = "login as guest failed: aaaaa is not a user"
    assert redactor.text(text) == text


def test_the_longest_of_overlapping_secrets_is_replaced_whole() -> None:
    redactor = Redactor(["abc123xyz", "abc123xyz-and-more-789"])
    assert redactor.text("key abc123xyz-and-more-789 here") == "key *** here"


def test_repr_does_not_show_the_secrets(redactor: Redactor) -> None:
    assert all(secret not in repr(redactor) for secret in SECRETS)


# --------------------------------------------------------------------------------------- partial echoes


@pytest.mark.parametrize(
    "echo",
    [
        "LibAcc***wxyz",  # prefix, mask, suffix
        "LibAccess0***",  # prefix and mask
        "****0123ABCDwxyz",  # mask and suffix
        "LibAcc…wxyz",  # ellipsis mask
        "LibAccess0123",  # an unmasked prefix with letters and digits
        "Ls3cr3t_98",  # an unmasked prefix of the secret key
        "ess0123ABCDw",  # a run from the middle
        "jwt-signing-01234",  # a prefix of a human-readable secret, with its digits
    ],
)
def test_a_partial_echo_of_a_secret_is_replaced(redactor: Redactor, echo: str) -> None:
    out = redactor.text(f"InvalidAccessKey: the key {echo} is not valid.")
    assert echo not in out
    assert out == f"InvalidAccessKey: the key {MASK} is not valid."


def test_a_masked_key_echo_keeps_the_sk_label(redactor: Redactor) -> None:
    out = redactor.text("Incorrect API key provided: sk-4f9c2a7e***e5f6. You can find your API key at ...")
    assert out == "Incorrect API key provided: sk-***. You can find your API key at ..."


def test_partial_echo_inside_json_and_headers(redactor: Redactor) -> None:
    body = json.dumps({"code": "InvalidApiKey", "message": "key LibAccess0123AB**** rejected"})
    out = redactor.text(body)
    assert "LibAccess0123" not in out
    assert json.loads(out) == {"code": "InvalidApiKey", "message": f"key {MASK} rejected"}


@pytest.mark.parametrize(
    "text",
    [
        "The battery is low: staple the horse",
        "signing failed; please retry later",
        "timestamp 0123456789 and 4567 were sent",
        "Request failed: abcdefghijklmnop",
    ],
)
def test_words_and_numbers_that_a_secret_contains_are_not_redacted(text: str) -> None:
    redactor = Redactor(["correct-horse-battery-staple", JWT_SECRET, "sk-abcdefghijklmnop0123456789"])
    assert redactor.text(text) == text


def test_a_chance_overlap_with_a_hex_key_leaves_an_image_url_intact() -> None:
    redactor = Redactor(["9f8e7d6c5b4a39281706f5e4d3c2b1a0"])  # a hex key, as some providers issue
    url = "https://cdn.example/img/20240101/07d6c5b4a3-00.png"  # 9 characters in common, unmasked
    assert redactor.text(url) == url


def test_the_documented_limits_of_partial_echoes(redactor: Redactor) -> None:
    # Fewer than 6 characters next to a mask, or fewer than 10 without one, are not taken for an echo.
    text = "key ****wxyz and key LibAcc0 and key 0123ABCDw"
    assert redactor.text(text) == text


# ------------------------------------------------------------------------------ key-shaped, unconfigured


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-abc123***xyz9", "Incorrect API key provided: sk-***"),
        ("key sk-proj-AbCdEf0123456789xyz was revoked.", "key sk-*** was revoked."),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "Authorization: Bearer ***"),
        ("authorization: bearer sk-abc123***xyz9", "authorization: bearer ***"),
        ("send Bearer 0a1b2c3d4e5f6a7b8c9d please", "send Bearer *** please"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
        ("proxy said Basic dXNlcjpwYXNz.", "proxy said Basic ***."),
        ("AccessKey=AKIDz8krbsJ5yKBZQpn74WFk Signature=q1w2e3r4t5", "AccessKey=*** Signature=***"),
        ("id AKIAIOSFODNN7EXAMPLE used", "id AKIA*** used"),
        ("id LTAI5tQwErTy12345678 used", "id LTAI*** used"),
        ("GET /v1/x?api_key=abc&page=2", "GET /v1/x?api_key=***&page=2"),
        ("GET /v1/x?apikey=abc&page=2", "GET /v1/x?apikey=***&page=2"),
        ("GET /v1/x?API_KEY=abc", "GET /v1/x?API_KEY=***"),
        ("GET /v1/x?token=abc;next", "GET /v1/x?token=***;next"),
        ("POST /auth password=hunter2 user=bob", "POST /auth password=*** user=bob"),
        ('{"api_key": "abc def", "model": "wanx"}', '{"api_key": "***", "model": "wanx"}'),
        ('{"apiKey":"abc","n":1}', '{"apiKey":"***","n":1}'),
        ('{"client_secret": "s"}', '{"client_secret": "***"}'),
        ('{"Authorization": "Bearer abc123def"}', '{"Authorization": "Bearer ***"}'),
        (r"{\"access_token\": \"eyJabc\"}", r"{\"access_token\": \"***\"}"),
        ("{'secret_key': 'abc', 'n': 1}", "{'secret_key': '***', 'n': 1}"),
        ("X-Api-Key: abcdef\nHost: x", "X-Api-Key: ***\nHost: x"),
        ("x-api-key: 0a1b2c3d4e", "x-api-key: ***"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: Basic ***"),
        ("password: hunter", "password: ***"),
        ("signature: q1w2e3r4t5y6", "signature: ***"),
        ("amqp://imaged:hunter2@mq.internal:5672/", "amqp://imaged:***@mq.internal:5672/"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ],
)
def test_key_shaped_tokens_are_replaced_keeping_the_label(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


def test_a_signed_object_url_keeps_its_path_and_expiry() -> None:
    url = (
        "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1d/7c/20240101/a1b2c3d4.png"
        "?Expires=1704153600&OSSAccessKeyId=LTAI5tQwErTy12345678&Signature=q9%2Bw8e7r6t5y4u%3D"
    )
    out = Redactor().text(url)
    assert out == (
        "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1d/7c/20240101/a1b2c3d4.png"
        "?Expires=1704153600&OSSAccessKeyId=***&Signature=***"
    )


def test_an_aws_presigned_url_keeps_its_path() -> None:
    url = (
        "https://bucket.s3.amazonaws.com/out/img.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEJr&X-Amz-Signature=0a1b2c3d4e5f"
    )
    out = Redactor().text(url)
    assert out == (
        "https://bucket.s3.amazonaws.com/out/img.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        "&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )


@pytest.mark.parametrize(
    "text",
    [
        "The task was canceled",
        "task 3f2a9c0e4b1d4e6f8a7b6c5d4e3f2a1b failed",
        "request 123e4567-e89b-12d3-a456-426614174000 accepted",
        "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1d/7c/20240101/a1b2c3d4.png",
        "https://cdn.liblib.cloud/img/9f8e7d6c5b4a39281706f5e4d3c2b1a0.png?x-oss-process=image/resize,w_512",
        '{"usage": {"input_tokens": 12, "output_tokens": 345, "image_count": 1}, "max_tokens": 100}',
        "Bearer authentication failed",
        "Invalid key: please check your configuration",
        "token: expired",
        "keyword: cat; tokenizer=bpe; monkeys: 3",
        "desk-organizer-2000 is in stock",
        "mongodb://127.0.0.1:27017 and https://host:8443/path",
        "model wanx2.1-t2i-turbo at 1024*1024, seed 42, steps=30",
        "DataInspectionFailed: Input data may contain inappropriate content.",
        "",
    ],
)
def test_ordinary_text_is_left_alone(redactor: Redactor, text: str) -> None:
    assert redactor.text(text) == text


def test_redaction_is_idempotent(redactor: Redactor) -> None:
    text = f"Bearer {ALIYUN_KEY}; api_key=abc; key LibAcc***wxyz; amqp://u:{AMQP_PASSWORD}@h/"
    once = redactor.text(text)
    assert redactor.text(once) == once
    assert all(secret not in once for secret in SECRETS)


ALNUM = string.ascii_letters + string.digits


@settings(database=None, deadline=None, max_examples=200)
@given(
    secret=st.text(ALNUM, min_size=MIN_SECRET_CHARS, max_size=40),
    before=st.text(max_size=60),
    after=st.text(max_size=60),
)
def test_a_configured_secret_never_survives(secret: str, before: str, after: str) -> None:
    out = Redactor([secret]).text(before + secret + after + secret)
    assert secret not in out


# ------------------------------------------------------------------------------------------------ value


def test_value_redacts_strings_in_nested_structures_keys_included(redactor: Redactor) -> None:
    data: dict[str, Any] = {
        "error": f"upstream said {ALIYUN_KEY}",
        LIB_ACCESS: "a key as a key",
        "list": [1, None, 2.5, True, ("Bearer abc123def456", f"x{LIB_SECRET}")],
        "nested": {"deeper": [{"api_key=abc": "fine"}]},
    }
    out = redactor.value(data)
    assert out == {
        "error": "upstream said ***",
        MASK: "a key as a key",
        "list": [1, None, 2.5, True, ["Bearer ***", "x***"]],
        "nested": {"deeper": [{"api_key=***": "fine"}]},
    }
    assert data["error"] == f"upstream said {ALIYUN_KEY}"  # the input is not modified


def test_value_keeps_keys_apart_that_redact_to_the_same_text(redactor: Redactor) -> None:
    out = redactor.value({ALIYUN_KEY: 1, LIB_ACCESS: 2, MASK: 3})
    assert sorted(out.values()) == [1, 2, 3]
    assert len(out) == 3


def test_value_handles_deep_nesting_and_cycles(redactor: Redactor) -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        nxt: list[Any] = []
        inner.append(nxt)
        inner = nxt
    inner.append(ALIYUN_KEY)
    out = redactor.value(deep)
    for _ in range(5000):
        out = out[0]
    assert out == [MASK]

    cyclic: dict[str, Any] = {"k": LIB_SECRET}
    cyclic["self"] = cyclic
    copy = redactor.value(cyclic)
    assert copy["k"] == MASK and copy["self"] is copy


def test_value_passes_scalars_through(redactor: Redactor) -> None:
    assert redactor.value(42) == 42
    assert redactor.value(None) is None
    assert redactor.value(ALIYUN_KEY) == MASK


# ------------------------------------------------------------------------------------------ from_settings


def full_settings() -> list[BaseModel]:
    """The core settings and both providers' settings, every secret set."""
    core = Settings.model_validate(
        {
            "amqp_url": f"amqp://imaged:{AMQP_PASSWORD}@mq.internal:5672/",
            "mongodb_url": "mongodb://app:M0ngo%2FSecret99@db.internal:27017/imaged",
            "jwt_secret": JWT_SECRET,
            "api_key_pepper": "pepper-42-XYZW-pepper",
            "amqp_prefix": "imaged",
        }
    )
    aliyun = AliyunProvider.load_settings(
        api_key=ALIYUN_KEY, extra_api_keys=["sk-extra11112222333344", "sk-extra55556666777788"]
    )
    liblibai = LiblibProvider.load_settings(
        access_key=LIB_ACCESS, secret_key=LIB_SECRET, extra_keys=["ExtraAcc1234QWER:ExtraSec5678xyzUIOP"]
    )
    return [core, aliyun, liblibai]


EVERY_SECRET = [
    AMQP_PASSWORD,
    "M0ngo%2FSecret99",
    "M0ngo/Secret99",
    ALIYUN_KEY,
    "sk-extra11112222333344",
    "sk-extra55556666777788",
    LIB_ACCESS,
    LIB_SECRET,
    "ExtraAcc1234QWER",
    "ExtraSec5678xyzUIOP",
    JWT_SECRET,
    "pepper-42-XYZW-pepper",
]


@pytest.mark.parametrize("secret", EVERY_SECRET)
def test_from_settings_takes_every_secret(secret: str) -> None:
    redactor = Redactor.from_models(full_settings())
    out = redactor.text(f"provider echoed «{secret}» in its error")
    assert out == f"provider echoed «{MASK}» in its error"


def test_from_settings_keeps_urls_and_plain_settings_readable() -> None:
    redactor = Redactor.from_models(full_settings())
    text = "connecting to mq.internal:5672 and db.internal:27017 as app, prefix imaged, https://dashscope.aliyuncs.com/api/v1"
    assert redactor.text(text) == text


def test_from_settings_with_defaults_redacts_nothing_ordinary() -> None:
    redactor = Redactor.from_settings(Settings.model_validate({}))
    text = "login as guest to amqp at 127.0.0.1:5672 failed"
    assert redactor.text(text) == text


def test_from_settings_takes_extra_secrets_and_new_secret_fields() -> None:
    class PluginOptions(BaseModel):
        token: SecretStr
        tokens: dict[str, SecretStr] = {}

    class PluginSettings(BaseModel):
        plain: str = "not-a-secret-123456"
        plugin_key: SecretStr | None = None
        options: PluginOptions
        pairs: tuple[SecretStr, ...] = ()

    config = PluginSettings(
        plugin_key=SecretStr("plugin-key-000111222"),
        options=PluginOptions(
            token=SecretStr("nested-token-333444"), tokens={"a": SecretStr("mapped-555666777")}
        ),
        pairs=(SecretStr("pair-888999000aaa"),),
    )
    redactor = Redactor.from_settings(config, extra=["extra-secret-bbbccc", SecretStr("extra-secret-dddeee")])
    for secret in (
        "plugin-key-000111222",
        "nested-token-333444",
        "mapped-555666777",
        "pair-888999000aaa",
        "extra-secret-bbbccc",
        "extra-secret-dddeee",
    ):
        assert redactor.text(f"[{secret}]") == f"[{MASK}]"
    assert redactor.text("not-a-secret-123456") == "not-a-secret-123456"


# ------------------------------------------------------------------------------------------------ logging


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged(redactor: Redactor) -> Iterator[tuple[logging.Logger, io.StringIO, Collect]]:
    """A logger whose text handler carries the filter, followed by a handler that keeps the records."""
    stream = io.StringIO()
    text_handler = logging.StreamHandler(stream)
    text_handler.setFormatter(TextFormatter())
    text_handler.addFilter(RedactingFilter(redactor))
    collect = Collect()
    logger = logging.getLogger("imaged.tests.redact")
    logger.handlers[:] = [text_handler, collect]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream, collect
    finally:
        logger.handlers.clear()
        logger.propagate = True


def test_filter_redacts_message_and_args(logged: tuple[logging.Logger, io.StringIO, Collect]) -> None:
    logger, stream, collect = logged
    logger.warning("submit failed: %s (key %s)", f"Bearer {ALIYUN_KEY}", "LibAcc***wxyz")
    output = stream.getvalue()
    assert ALIYUN_KEY not in output and "LibAcc" not in output
    assert "submit failed: Bearer *** (key ***)" in output
    record = collect.records[0]  # the next handler sees the redacted record
    assert record.getMessage() == "submit failed: Bearer *** (key ***)"
    assert record.args is None


def test_filter_redacts_extra_fields(logged: tuple[logging.Logger, io.StringIO, Collect]) -> None:
    logger, stream, collect = logged

    class Echo:
        def __str__(self) -> str:
            return f"echo {LIB_SECRET}"

    logger.info(
        "task failed",
        extra={"error": f"upstream: {LIB_SECRET}", "body": {"api_key": ALIYUN_KEY}, "obj": Echo(), "n": 3},
    )
    output = stream.getvalue()
    assert LIB_SECRET not in output and ALIYUN_KEY not in output
    record = collect.records[0]
    assert record.__dict__["error"] == "upstream: ***"
    assert record.__dict__["body"] == {"api_key": MASK}
    assert record.__dict__["obj"] == "echo ***"
    assert record.__dict__["n"] == 3


def test_filter_redacts_exception_text(logged: tuple[logging.Logger, io.StringIO, Collect]) -> None:
    logger, stream, collect = logged

    def call_provider() -> None:
        try:
            raise ConnectionError(f"proxy refused amqp://imaged:{AMQP_PASSWORD}@mq/")
        except ConnectionError as exc:
            raise RuntimeError(f"provider answered 401: Incorrect API key provided: {ALIYUN_KEY}") from exc

    try:
        call_provider()
    except RuntimeError:
        logger.exception("job crashed")
    output = stream.getvalue()
    assert ALIYUN_KEY not in output and AMQP_PASSWORD not in output
    assert "Traceback (most recent call last)" in output
    assert "RuntimeError: provider answered 401: Incorrect API key provided: ***" in output
    assert "ConnectionError: proxy refused amqp://imaged:***@mq/" in output
    record = collect.records[0]
    assert record.exc_info is None
    assert record.exc_text is not None and ALIYUN_KEY not in record.exc_text


def test_json_formatter_output_is_redacted(redactor: Redactor) -> None:
    record = logging.LogRecord("imaged.job", logging.ERROR, __file__, 1, "failed: %s", (ALIYUN_KEY,), None)
    record.__dict__["error"] = {"message": f"Bearer {LIB_SECRET}"}
    assert RedactingFilter(redactor).filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed: ***"
    assert line["error"] == {"message": "Bearer ***"}


def test_filter_redacts_stack_info(logged: tuple[logging.Logger, io.StringIO, Collect]) -> None:
    logger, stream, _ = logged
    logger.info("where %s", "am I", stack_info=True)
    assert "Stack (most recent call last)" in stream.getvalue()


def test_filter_never_raises_and_never_leaks(logged: tuple[logging.Logger, io.StringIO, Collect]) -> None:
    logger, stream, collect = logged

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError(f"cannot show {ALIYUN_KEY}")

    logger.error("bad format %d", f"not a number {ALIYUN_KEY}")
    logger.error("extra that cannot be shown", extra={"thing": Broken(), "later": f"leak {ALIYUN_KEY}"})
    output = stream.getvalue()
    assert ALIYUN_KEY not in output
    assert "bad format" in collect.records[0].getMessage()
    assert "redaction failed" in collect.records[1].getMessage()
    assert collect.records[1].__dict__["later"] == "<dropped>"


# ---------------------------------------------------------------------------------------------- big input


def timed(redactor: Redactor, text: str) -> tuple[str, float]:
    start = time.perf_counter()
    out = redactor.text(text)
    return out, time.perf_counter() - start


def test_a_17_mb_error_is_redacted_in_linear_time(redactor: Redactor) -> None:
    chunk = (
        "<html><body><h1>502 Bad Gateway</h1><p>The upstream at https://gw.example/v1/img?id=42 "
        'did not answer. {"code": "Throttling", "request_id": "123e4567-e89b-12d3-a456-426614174000"}</p> '
    )
    text = chunk * (17_000_000 // len(chunk)) + f"Authorization: Bearer {ALIYUN_KEY} key=LibAcc***wxyz"
    out, seconds = timed(redactor, text)
    assert out.endswith("Authorization: Bearer *** key=***")
    assert seconds < 5, f"{seconds:.2f}s"  # a safety check against backtracking, not a benchmark


@pytest.mark.parametrize(
    "unit",
    [
        "a",  # one long run
        "a-",  # hyphenated run
        "key=",  # labels without values
        'key:"',  # unterminated quotes
        "x://a:",  # URL-like without "@"
        "Bearer ",  # schemes without tokens
        "sk-",  # prefixes without keys
        "a1b2c3d4 ",  # many short key-shaped tokens
        "LibAcc0123 ",  # many partial candidates
    ],
)
def test_adversarial_shapes_take_linear_time(redactor: Redactor, unit: str) -> None:
    text = unit * (1_700_000 // len(unit))
    _, seconds = timed(redactor, text)
    assert seconds < 5, f"{seconds:.2f}s for 1.7 MB of {unit!r}"
