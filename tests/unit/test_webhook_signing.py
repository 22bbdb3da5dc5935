"""Webhook signatures, secrets and the retry schedule (imaged/webhooks), without services.

Signatures are checked against the Standard Webhooks reference library (``standardwebhooks``), which imaged does
not use itself: an independent verifier.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from pydantic import SecretStr, ValidationError
from standardwebhooks import Webhook as ReferenceWebhook
from standardwebhooks import WebhookVerificationError

from imaged.errors import ConfigError
from imaged.webhooks.schedule import Wait, next_wait, tier_delay
from imaged.webhooks.settings import WebhookSettings, load_webhook_settings
from imaged.webhooks.signing import decode_secret, signature, signed_headers

pytestmark = pytest.mark.timeout(30)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def test_the_specification_example_signs_to_its_published_signature() -> None:
    # The example of the Standard Webhooks specification (and of its reference libraries' tests).
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signed_headers_verify_with_the_reference_library() -> None:
    body = json.dumps(
        {"event_id": "t1:3", "status": "completed", "text": "一只小猫"}, ensure_ascii=False
    ).encode()
    headers = signed_headers(KEY, "t1:3", body)
    assert headers["webhook-id"] == "t1:3"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert ReferenceWebhook(SECRET).verify(body, headers) == json.loads(body)


@pytest.mark.parametrize(
    ("change", "value"),
    [("webhook-id", "t1:4"), ("webhook-timestamp", None), ("body", b'{"status": "failed"}')],
)
def test_a_changed_id_timestamp_or_body_does_not_verify(change: str, value: bytes | str | None) -> None:
    body = b'{"status": "completed"}'
    now = time.time()
    headers = signed_headers(KEY, "t1:3", body, now=now)
    if change == "body":
        assert isinstance(value, bytes)
        body = value
    else:
        headers[change] = value if isinstance(value, str) else str(int(now) - 1)
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(SECRET).verify(body, headers)


def test_another_secret_does_not_verify() -> None:
    body = b"{}"
    headers = signed_headers(KEY, "t1:1", body)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(other).verify(body, headers)


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(KEY).decode(),  # no whsec_ prefix
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(bytes(16)).decode(),  # too short a key
        "whsec_" + base64.b64encode(bytes(65)).decode(),  # too long
    ],
)
def test_a_malformed_secret_is_refused_by_name_without_its_value(secret: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WebhookSettings(_env_file=None, secret=SecretStr(secret))
    assert secret not in str(caught.value)
    assert secret[6:] not in str(caught.value)
    with pytest.raises(ConfigError) as config_error:
        load_webhook_settings(_env_file=None, secret=secret)
    message = str(config_error.value)
    assert message.startswith("invalid configuration: IMAGED_WEBHOOK_SECRET: ")
    assert "whsec_" in message and secret not in message


def test_a_valid_secret_gives_its_key() -> None:
    settings = WebhookSettings(_env_file=None, secret=SecretStr(SECRET))
    assert settings.secret_key() == KEY
    assert SECRET not in repr(settings)
    assert WebhookSettings(_env_file=None).secret_key() is None


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGED_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("IMAGED_WEBHOOK_RETRY_S", "3600")
    monkeypatch.setenv("IMAGED_WEBHOOK_ALLOWED_NETWORKS", '["10.0.0.0/8"]')
    monkeypatch.setenv("IMAGED_WEBHOOK_TENANT_URLS", '{"acme": "http://10.1.2.3/hooks?token=abc"}')
    settings = WebhookSettings(_env_file=None)
    assert settings.secret_key() == KEY
    assert settings.retry_s == 3600
    assert settings.tenant_urls == {"acme": "http://10.1.2.3/hooks?token=abc"}
    assert WebhookSettings(_env_file=None, secret=None).retry_s == 3600


def test_defaults() -> None:
    settings = WebhookSettings(_env_file=None)
    assert (settings.retry_s, settings.first_retry_s, settings.timeout_s) == (86400, 5, 10)
    assert settings.allowed_networks == [] and settings.tenant_urls == {}


def test_a_tenant_url_the_policy_refuses_stops_the_start_naming_tenant_and_setting() -> None:
    url = "http://10.1.2.3/hooks?token=tok-Secret-123"
    with pytest.raises(ConfigError) as caught:
        load_webhook_settings(_env_file=None, tenant_urls={"acme": url})
    message = str(caught.value)
    assert "IMAGED_WEBHOOK_TENANT_URLS" in message and "'acme'" in message
    assert "a private address" in message and "IMAGED_WEBHOOK_ALLOWED_NETWORKS" in message
    assert "tok-Secret-123" not in message
    allowed = load_webhook_settings(
        _env_file=None, tenant_urls={"acme": url}, allowed_networks=["10.0.0.0/8"]
    )
    assert allowed.tenant_urls["acme"] == url


def test_a_bad_network_is_named() -> None:
    with pytest.raises(
        ConfigError, match=r"IMAGED_WEBHOOK_ALLOWED_NETWORKS: .*'10\.0\.0\.1/8' is not a network"
    ):
        load_webhook_settings(_env_file=None, allowed_networks=["10.0.0.1/8"])


def test_backoff_grows_by_tiers_and_repeats_the_last() -> None:
    day = 86400.0
    waits = [next_wait(n, day, 5.0, 7) for n in range(1, 10)]
    assert [w.tier if w else None for w in waits] == [0, 1, 2, 3, 4, 5, 6, 6, 6]
    assert [w.seconds if w else None for w in waits][:3] == [5.0, 20.0, 80.0]
    assert all(w is not None and not w.final for w in waits)
    assert tier_delay(5.0, 6) == 5.0 * 4**6


def test_the_last_wait_fits_the_deadline_and_is_final() -> None:
    # Tier 2 (1.6 s) is due but only 1 s is left: one last attempt after tier 1 (0.4 s).
    assert next_wait(3, 1.0, 0.1, 7) == Wait(1, 0.4, final=True)
    # Not even the first tier fits: give up.
    assert next_wait(3, 0.05, 0.1, 7) is None
    assert next_wait(1, 0.0, 0.1, 7) is None
