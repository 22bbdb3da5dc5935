"""The OpenAPI document: in step with the router, and a bounded property-based run (schemathesis) against the live
API on loopback that must find no server error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, strategies
from schemathesis import GenerationMode

from imaged.api.openapi import openapi_document
from imaged.daemon import Daemon
from imaged.settings import Settings
from imaged.simulator import Simulator

from .conftest import Credentials, auth_settings

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


@pytest.fixture
def api_settings(
    namespace: str, tmp_path: Path, simulator: Simulator, rsa_private: rsa.RSAPrivateKey
) -> Settings:
    """Short waits: generated requests with ``"is_async": false`` must not eat the time budget."""
    return auth_settings(
        namespace, tmp_path / "images", simulator, rsa_private, sync_wait_s=1.0, openai_wait_s=1.0
    )


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.mark.timeout(30)
async def test_document_and_router_list_the_same_routes(
    api_daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{api_daemon.http_url}/api/v1/openapi.json") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served["openapi"].startswith("3.1")
    assert served == openapi_document(tuple(api_daemon.catalog.names()))  # models and their aliases
    assert "wanx2.1-t2i-turbo" in served["components"]["schemas"]["Request"]["properties"]["model"]["enum"]
    assert api_daemon._runner is not None
    app = api_daemon._runner.app
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert routed == documented(served)
    # Every operation says how it fails, and the secured ones say they need a credential.
    for path, item in served["paths"].items():
        for method, op in item.items():
            if op.get("security"):
                assert "401" in op["responses"], (method, path)


def run_schemathesis(base_url: str, headers: dict[str, str], budget_s: float) -> list[str]:
    """Generate requests from the served document (valid and invalid ones) and collect server errors."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json", timeout=10)
    strategy = strategies.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, headers=headers),
        schema.as_strategy(GenerationMode.NEGATIVE, headers=headers),
    )
    deadline = time.monotonic() + budget_s
    errors: list[str] = []
    calls = [0]

    with requests.Session() as session:

        @hypothesis.settings(
            max_examples=300,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def probe(case: Any) -> None:
            if time.monotonic() > deadline:
                return
            calls[0] += 1
            response = case.call(base_url=base_url, session=session, timeout=30)
            if response.status_code >= 500 and not (
                case.path == "/health/ready" and response.status_code == 503
            ):
                errors.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

        probe()
    assert calls[0] > 20, "schemathesis made too few calls to mean anything"
    return errors


@pytest.mark.timeout(100)
# The daemon's jobs (on the event loop, beside the generating thread) draw jitter from the global `random`;
# Hypothesis notices the global state move while it generates and takes it for a strategy using `random`.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_schemathesis_finds_no_server_error(api_daemon: Daemon, creds: Credentials) -> None:
    assert api_daemon.http_url is not None
    errors = await asyncio.to_thread(run_schemathesis, api_daemon.http_url, creds.headers("alice"), 45.0)
    assert errors == []
