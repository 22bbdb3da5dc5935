"""Authentication and tenancy on the live API: API keys (settings and database) and JWTs (HS256, RS256) for two
tenants; other tenants' tasks answer 404; missing, bad, expired or misaddressed credentials answer 401."""

from __future__ import annotations

import json
import logging
import secrets

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from imaged.api import ROUTES
from imaged.api.links import FILE_ROUTE
from imaged.auth import ApiKeys
from imaged.daemon import Daemon

from ..support import Bus
from .conftest import ALICE_KEY, AUDIENCE, HS256_SECRET, ISSUER, Credentials
from .support import assert_error_envelope, call, seed_json

pytestmark = pytest.mark.timeout(90)

PUBLIC = {"/health/live", "/health/ready", "/api/v1/openapi.json", "/metrics"}
SIGNED = {FILE_ROUTE}  # no credential: the link's own signature is checked
VIAS = ["key", "hs256", "rs256"]


def secured_routes(task_id: str) -> list[tuple[str, str]]:
    return [
        (method, path.replace("{task_id}", task_id))
        for path, method, _ in ROUTES
        if path not in PUBLIC | SIGNED
    ]


async def test_every_secured_route_refuses_missing_and_bad_credentials(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    base = api_daemon.http_url
    routes = secured_routes("some-task")
    assert len(routes) == 12
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {ALICE_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {creds.token('alice', expires_in=-3600)}"},
    ]
    for method, path in routes:
        for headers in bad_headers:
            reply = await call(http, method, f"{base}{path}", headers=headers, json_body={})
            if path.startswith("/v1/"):  # the OpenAI-compatible API answers in OpenAI's shape
                assert reply.status == 401 and reply.body["error"]["type"], reply.text
            else:
                assert_error_envelope(reply, 401)
            assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")
    for path in PUBLIC:
        async with http.get(f"{base}{path}") as resp:
            assert resp.status == 200, path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("expired", "expired"),
        ("audience", "wrong audience"),
        ("issuer", "wrong issuer"),
        ("signature", "bad signature"),
        ("alg-none", "algorithm not accepted"),
        ("rs256-other-key", "bad signature"),
        ("no-sub", "'sub'"),
        ("no-exp", "'exp'"),
        ("bad-tenant", "not a tenant name"),
    ],
)
async def test_jwt_checks(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession, case: str, message: str
) -> None:
    now = 1_900_000_000
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now}
    if case == "expired":
        token = creds.token("alice", expires_in=-120)  # beyond the 30 s leeway
    elif case == "audience":
        token = creds.token("alice", audience="someone-else")
    elif case == "issuer":
        token = creds.token("alice", "RS256", issuer="https://evil.example.test")
    elif case == "signature":
        token = jwt.encode(claims, "another-secret-that-is-also-32-bytes-long", algorithm="HS256")
    elif case == "alg-none":
        token = jwt.encode(claims, "", algorithm="none")
    elif case == "rs256-other-key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims, other, algorithm="RS256")
    elif case == "no-sub":
        token = jwt.encode({k: v for k, v in claims.items() if k != "sub"}, HS256_SECRET, algorithm="HS256")
    elif case == "no-exp":
        token = jwt.encode({k: v for k, v in claims.items() if k != "exp"}, HS256_SECRET, algorithm="HS256")
    else:
        token = jwt.encode({**claims, "sub": "bad tenant!"}, HS256_SECRET, algorithm="HS256")
    reply = await call(
        http, "GET", f"{api_daemon.http_url}/api/v1/models", headers={"Authorization": f"Bearer {token}"}
    )
    assert_error_envelope(reply, 401)
    assert message in reply.body["message"]


async def test_tenants_see_only_their_own_tasks(
    api_daemon: Daemon,
    creds: Credentials,
    bus: Bus,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = api_daemon.http_url
    created: dict[str, str] = {}
    for tenant, model in (("alice", "wanx2.1-t2i-turbo"), ("bob", "star-3-alpha-t2i")):
        reply = await call(
            http, "POST", f"{base}/api/v1/tasks/", headers=creds.headers(tenant), json_body=seed_json(model)
        )
        assert reply.status == 200, reply.text
        assert reply.body["success"] is True and reply.body["results"]["status"] == "pending"
        created[tenant] = reply.body["results"]["task_id"]
    terminal = await bus.wait_terminal(created.values(), within=60)
    assert all(e["status"] == "completed" for e in terminal.values()), terminal

    for tenant, task_id in created.items():
        stored = await api_daemon.store.get(task_id)
        assert stored is not None and stored.owner == tenant
        other = "bob" if tenant == "alice" else "alice"
        for via in VIAS:
            mine = creds.headers(tenant, via)
            theirs = creds.headers(other, via)
            for route in ("status", "result"):
                reply = await call(http, "GET", f"{base}/api/v1/tasks/{task_id}/{route}", headers=mine)
                assert reply.status == 200 and reply.body["results"]["task_id"] == task_id, reply.text
                assert reply.body["results"]["status"] == "completed"
                reply = await call(http, "GET", f"{base}/api/v1/tasks/{task_id}/{route}", headers=theirs)
                assert_error_envelope(reply, 404)
            reply = await call(http, "POST", f"{base}/api/v1/tasks/{task_id}/cancel", headers=theirs)
            assert_error_envelope(reply, 404)
            reply = await call(http, "POST", f"{base}/api/v1/tasks/{task_id}/cancel", headers=mine)
            assert_error_envelope(reply, 409)  # completed already
            reply = await call(http, "GET", f"{base}/api/v1/tasks", headers=mine)
            assert reply.status == 200
            assert [t["task_id"] for t in reply.body["results"]["tasks"]] == [task_id]
            assert reply.body["results"]["total"] == 1

    # An unknown id and another tenant's id look the same.
    unknown = await call(http, "GET", f"{base}/api/v1/tasks/nope/status", headers=creds.headers("bob"))
    foreign = await call(
        http, "GET", f"{base}/api/v1/tasks/{created['alice']}/status", headers=creds.headers("bob")
    )
    assert unknown.status == foreign.status == 404

    # Claiming another tenant's task id is refused.
    body = seed_json("wanx2.1-t2i-turbo", task_id=created["alice"])
    reply = await call(http, "POST", f"{base}/api/v1/tasks/", headers=creds.headers("bob"), json_body=body)
    assert_error_envelope(reply, 409)
    # The owner creating it again is idempotent: it answers the existing task.
    reply = await call(http, "POST", f"{base}/api/v1/tasks/", headers=creds.headers("alice"), json_body=body)
    assert reply.status == 200 and reply.body["results"]["status"] == "completed"

    # No credential ever reaches a log line.
    logged = caplog.text
    for secret in (ALICE_KEY, creds.bob_key, HS256_SECRET, creds.token("alice")[:60]):
        assert secret not in logged


async def test_revoked_database_key_is_refused(
    api_daemon: Daemon, creds: Credentials, http: aiohttp.ClientSession
) -> None:
    url = f"{api_daemon.http_url}/api/v1/models"
    keys = ApiKeys(api_daemon.store.db["api_keys"])
    key_id, key = await keys.add("carol")
    reply = await call(http, "GET", url, headers={"Authorization": f"Bearer {key}"})
    assert reply.status == 200 and reply.body["success"] is True
    assert await keys.revoke(key_id)
    reply = await call(http, "GET", url, headers={"Authorization": f"Bearer {key}"})
    assert_error_envelope(reply, 401)
    assert not await keys.revoke(key_id)


async def test_bus_requests_belong_to_their_amqp_user(
    api_daemon: Daemon, creds: Credentials, bus: Bus, http: aiohttp.ClientSession
) -> None:
    """A request published on the bus with AMQP user_id "guest" belongs to tenant "guest"."""
    task_id = secrets.token_hex(12)
    body = json.dumps(seed_json("wanx2.1-t2i-turbo")).encode()
    await bus.publish(body, message_id=task_id, user_id="guest")
    await bus.wait_terminal([task_id], within=30)
    stored = await api_daemon.store.get(task_id)
    assert stored is not None and stored.owner == "guest"
    _, guest_key = await ApiKeys(api_daemon.store.db["api_keys"]).add("guest")
    url = f"{api_daemon.http_url}/api/v1/tasks/{task_id}/status"
    reply = await call(http, "GET", url, headers={"Authorization": f"Bearer {guest_key}"})
    assert reply.status == 200 and reply.body["results"]["status"] == "completed"
    reply = await call(http, "GET", url, headers=creds.headers("alice"))
    assert_error_envelope(reply, 404)
