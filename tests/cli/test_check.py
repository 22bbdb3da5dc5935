"""`imaged check`: each misconfiguration gets its own message and exit code, and no secret is printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imaged.cli.exits import (
    EXIT_CHECK_AUTH,
    EXIT_CHECK_BROKER,
    EXIT_CHECK_DATABASE,
    EXIT_CHECK_IMAGES,
    EXIT_CHECK_PROVIDER_KEYS,
    EXIT_CONFIG,
)
from imaged.simulator import SimulatorConfig

from .conftest import Cli

pytestmark = pytest.mark.timeout(120)

BROKER_PASSWORD = "br0ker-pa55word"
DB_PASSWORD = "db-pa55word"


async def test_a_good_configuration_passes(cli: Cli) -> None:
    run = await cli("check")
    assert run.code == 0, run.out + run.err
    lines = {line.split()[1]: line for line in run.out.splitlines()}
    assert lines["broker"].startswith("ok") and lines["database"].startswith("ok")
    assert "open: no API keys" in lines["auth"]
    run = await cli("check", "--json")
    report = run.json()
    assert report["ok"] is True and report["exit_code"] == 0
    assert [c["name"] for c in report["checks"]] == [
        "configuration",
        "catalog",
        "auth",
        "broker",
        "amqp user",
        "database",
        "images",
        "webhooks",
        "providers",
        "provider keys",
    ]
    webhooks = next(c for c in report["checks"] if c["name"] == "webhooks")
    assert webhooks["ok"] is True and webhooks["message"].startswith("off (no IMAGED_WEBHOOK_SECRET")
    providers = next(c for c in report["checks"] if c["name"] == "providers")
    shown = dict(part.split(": ", 1) for part in providers["message"].split("; "))
    assert "api_key=set" in shown["aliyun"] and "max_in_flight=2" in shown["aliyun"]
    assert "access_key=set, secret_key=set" in shown["liblibai"]
    assert SimulatorConfig().dashscope_api_key not in run.out
    amqp_user = next(c for c in report["checks"] if c["name"] == "amqp user")
    assert amqp_user["ok"] is True and amqp_user["warning"] is True  # the tests log in as 'guest'
    assert lines["amqp"].startswith("WARN") and "user of its own" in lines["amqp"]


CASES = [
    (
        "broker-port",
        {"IMAGED_AMQP_URL": f"amqp://guest:{BROKER_PASSWORD}@127.0.0.1:1/"},
        EXIT_CHECK_BROKER,
        "broker",
        "cannot connect to amqp://guest:***@127.0.0.1:1/",
    ),
    (
        "broker-password",
        {"IMAGED_AMQP_URL": f"amqp://guest:{BROKER_PASSWORD}@127.0.0.1:5672/"},
        EXIT_CHECK_BROKER,
        "broker",
        "refused the user name or password",
    ),
    (
        "database-port",
        {"IMAGED_MONGODB_URL": f"mongodb://admin:{DB_PASSWORD}@127.0.0.1:1/?serverSelectionTimeoutMS=500"},
        EXIT_CHECK_DATABASE,
        "database",
        "cannot reach mongodb://admin:***@127.0.0.1:1/",
    ),
    (
        "database-url",
        {"IMAGED_MONGODB_URL": f"postgres://admin:{DB_PASSWORD}@127.0.0.1/"},
        EXIT_CHECK_DATABASE,
        "database",
        "not a usable MongoDB URL",
    ),
    (
        "liblibai-key",
        {"IMAGED_LIBLIBAI_SECRET_KEY": None},
        EXIT_CHECK_PROVIDER_KEYS,
        "provider",
        "liblibai: no credentials (set IMAGED_LIBLIBAI_ACCESS_KEY and IMAGED_LIBLIBAI_SECRET_KEY)",
    ),
    (
        "aliyun-key",
        {"IMAGED_ALIYUN_API_KEY": None},
        EXIT_CHECK_PROVIDER_KEYS,
        "provider",
        "aliyun: no credentials (set IMAGED_ALIYUN_API_KEY)",
    ),
    (
        "provider-setting",
        {"IMAGED_LIBLIBAI_MAX_IN_FLIGHT": "none"},
        EXIT_CONFIG,
        "providers",
        "provider liblibai: IMAGED_LIBLIBAI_MAX_IN_FLIGHT",
    ),
    (
        "open-on-all-interfaces",
        {"IMAGED_HTTP_HOST": "0.0.0.0"},
        EXIT_CHECK_AUTH,
        "auth",
        "IMAGED_HTTP_HOST=0.0.0.0 is not loopback",
    ),
    (
        "short-jwt-secret",
        {"IMAGED_JWT_SECRET": "short-secret", "IMAGED_JWT_ISSUER": "i", "IMAGED_JWT_AUDIENCE": "a"},
        EXIT_CHECK_AUTH,
        "auth",
        "IMAGED_JWT_SECRET must be at least 32 bytes long",
    ),
    (
        "webhook-secret",
        {"IMAGED_WEBHOOK_SECRET": "short-secret"},
        EXIT_CONFIG,
        "webhooks",
        "IMAGED_WEBHOOK_SECRET must be 'whsec_' followed by the base64",
    ),
]


@pytest.mark.parametrize(("case", "env", "code", "name", "message"), CASES, ids=[c[0] for c in CASES])
async def test_each_misconfiguration_is_named(
    cli: Cli, case: str, env: dict[str, str | None], code: int, name: str, message: str
) -> None:
    run = await cli("check", env=env)
    assert run.code == code, run.out + run.err
    failing = [line for line in run.out.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1, run.out
    assert failing[0].split()[1] == name and message in failing[0], failing[0]
    for secret in (BROKER_PASSWORD, DB_PASSWORD, "short-secret"):
        assert secret not in run.out + run.err
    report = (await cli("check", "--json", env=env)).json()
    assert report["exit_code"] == code
    assert [c["exit_code"] for c in report["checks"] if not c["ok"]] == [code]


async def test_unwritable_image_dir(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    await asyncio.to_thread(blocker.write_text, "not a directory")
    run = await cli("check", env={"IMAGED_IMAGE_DIR": str(blocker / "images")})
    assert run.code == EXIT_CHECK_IMAGES, run.out + run.err
    assert "is not a directory" in run.out


async def test_invalid_settings(cli: Cli) -> None:
    run = await cli("check", env={"IMAGED_HTTP_PORT": "eighty", "IMAGED_API_KEYS": '{"alice": 5}'})
    assert run.code == EXIT_CONFIG
    assert "IMAGED_HTTP_PORT" in run.err and "IMAGED_API_KEYS" in run.err
    assert "eighty" not in run.err  # values are not echoed: they may be secrets
