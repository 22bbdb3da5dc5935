"""The network guard (imaged/netguard.py): which addresses are refused, URL checks, and aiohttp connecting
only where the policy allows, against a server on loopback (no other network needed)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from imaged.errors import DownloadError
from imaged.netguard import (
    AddressPolicy,
    BlockedAddress,
    GuardedConnector,
    GuardedResolver,
    RefusedURL,
    check_url,
    guarded_connector,
)

pytestmark = pytest.mark.timeout(30)

PUBLIC = AddressPolicy([])
LOOPBACK_ALLOWED = AddressPolicy(["127.0.0.0/8"])

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, a loopback"),
    ("::7f00:1", "IPv4-compatible form of 127.0.0.1"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("100.100.100.200", "shared"),  # Alibaba Cloud metadata, in 100.64.0.0/10
    ("fd00:ec2::254", "unique-local"),  # AWS metadata over IPv6
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"),
    ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "discard-only"),
    ("5f00::1", "reserved"),
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_special_purpose_addresses_are_refused(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not PUBLIC.allows(ip)
    why = PUBLIC.refusal(ip)
    assert why is not None and reason in why


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert PUBLIC.allows(ipaddress.ip_address(address))


def test_allowed_networks_let_only_themselves_through() -> None:
    assert LOOPBACK_ALLOWED.allows(ipaddress.ip_address("127.0.0.1"))
    assert LOOPBACK_ALLOWED.allows(ipaddress.ip_address("127.9.9.9"))
    assert LOOPBACK_ALLOWED.allows(ipaddress.ip_address("::ffff:127.0.0.1"))  # the same socket destination
    assert not LOOPBACK_ALLOWED.allows(ipaddress.ip_address("10.0.0.1"))
    assert not LOOPBACK_ALLOWED.allows(ipaddress.ip_address("::1"))
    assert not LOOPBACK_ALLOWED.allows(
        ipaddress.ip_address("64:ff9b::7f00:1")
    )  # a NAT64 gateway, not loopback
    private = AddressPolicy(["10.0.0.0/8", "fd00::/8"])
    assert private.allows(ipaddress.ip_address("10.1.2.3"))
    assert private.allows(ipaddress.ip_address("fd00:ec2::254"))
    assert not private.allows(ipaddress.ip_address("169.254.169.254"))
    # An IPv6 network never matches an IPv4 address, however their integers compare.
    assert not AddressPolicy(["::/96"]).allows(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "not-a-network", "10.0.0.0/33", ""])
def test_a_bad_network_is_a_value_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="IMAGED_DOWNLOAD_ALLOWED_NETWORKS") as caught:
        AddressPolicy(["127.0.0.0/8", bad])
    assert repr(bad) in str(caught.value)


def test_describe() -> None:
    assert PUBLIC.describe() == "public addresses only"
    assert AddressPolicy([" 127.0.0.0/8", "::1"]).describe() == "public addresses and 127.0.0.0/8, ::1/128"


def test_refusals_are_download_errors_that_are_never_retried() -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url("http://127.0.0.1/x", PUBLIC)
    error = caught.value
    assert isinstance(error, RefusedURL) and isinstance(error, DownloadError)
    assert (error.code, error.retryable) == ("blocked_address", False)
    assert (error.host, error.address, error.reason) == ("127.0.0.1", "127.0.0.1", "a loopback address")
    assert error.info().category == "download_failed"


# --- check_url ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        (
            "http://127.0.0.1:8080/x",
            BlockedAddress,
            "image host '127.0.0.1' is a loopback address: refused (allow it with IMAGED_DOWNLOAD_ALLOWED_NETWORKS)",
        ),
        ("http://[::ffff:127.0.0.1]/x", BlockedAddress, "IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("http://[fe80::1%25eth0]/x", BlockedAddress, "a link-local address"),
        ("http://0.0.0.0/", BlockedAddress, "'0.0.0.0' is an unspecified"),
        ("http://[::]/", BlockedAddress, "the unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", BlockedAddress, "link-local"),
        # numeric forms the C library turns into 127.0.0.1: refused however the policy reads
        ("http://127.1/", BlockedAddress, "'127.1' is a numeric address in a non-standard form"),
        ("http://2130706433/", BlockedAddress, "non-standard form"),
        ("http://0x7f000001/", BlockedAddress, "non-standard form"),
        ("http://017700000001/", BlockedAddress, "non-standard form"),
        ("http://0177.0.0.1/", BlockedAddress, "non-standard form"),
        ("http://0x7f.1/", BlockedAddress, "non-standard form"),
        ("http://127.0.0.1./", BlockedAddress, "non-standard form"),
        ("http://１２７.0.0.1/", BlockedAddress, "refused"),  # full-width digits: yarl reads 127.0.0.1
        ("http://user@127.0.0.1/x", RefusedURL, "image URL carries user info (user@host): refused"),
        ("http://user:s3cret@example.com/x", RefusedURL, "user info"),
        ("http://@example.com/x", RefusedURL, "user info"),
        ("ftp://example.com/x", RefusedURL, "image URL has scheme 'ftp', not http or https: refused"),
        ("file:///etc/passwd", RefusedURL, "scheme 'file'"),
        ("http:///nohost", RefusedURL, "image URL has no host: refused"),
        ("http://evil.example\\@127.0.0.1/", RefusedURL, "cannot be parsed"),  # parsers disagree on the host
    ],
)
def test_check_url_refuses(url: str, error: type[RefusedURL], message: str) -> None:
    with pytest.raises(error) as caught:
        check_url(url, PUBLIC)
    assert message in caught.value.message
    assert not caught.value.retryable
    assert "s3cret" not in caught.value.message


def test_check_url_passes_names_and_allowed_literals() -> None:
    # Names are left to the resolver (nothing here resolves them).
    assert str(check_url("https://example.com/x", PUBLIC)) == "https://example.com/x"
    assert check_url("http://localhost/x", PUBLIC).raw_host == "localhost"
    assert check_url("http://bücher.example/x", PUBLIC).raw_host == "xn--bcher-kva.example"
    assert str(check_url("http://8.8.8.8/x", PUBLIC)) == "http://8.8.8.8/x"
    assert check_url("http://[2606:4700:4700::1111]/x", PUBLIC).raw_host == "2606:4700:4700::1111"
    assert check_url("http://127.0.0.1:8080/x", LOOPBACK_ALLOWED).port == 8080
    # A numeric form stays refused: the allowed networks are matched against addresses, not guesses.
    with pytest.raises(BlockedAddress):
        check_url("http://127.1/", LOOPBACK_ALLOWED)


def test_messages_name_the_policy_s_setting_and_kind() -> None:
    webhook = AddressPolicy([], what="webhook", setting="IMAGED_WEBHOOK_ALLOWED_NETWORKS")
    with pytest.raises(BlockedAddress, match=r"^webhook host '10\.0\.0\.1' is a private address: refused "):
        check_url("http://10.0.0.1/hook", webhook)
    with pytest.raises(BlockedAddress, match=r"a private address: refused$"):
        check_url("http://10.0.0.1/hook", AddressPolicy([], setting=None))


# --- the resolver ---------------------------------------------------------------------------------------------


def result(host: str, address: str, port: int = 80) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)


@dataclass
class ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next of its answers (a DNS server that changes its mind)."""

    answers: list[list[str]]
    lookups: list[str] = field(default_factory=list)
    closed: bool = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        return [result(host, address, port) for address in self.answers.pop(0)]

    async def close(self) -> None:
        self.closed = True


async def test_localhost_is_refused_after_resolution() -> None:
    with pytest.raises(BlockedAddress) as caught:
        await GuardedResolver(PUBLIC).resolve("localhost", 80, socket.AF_INET)
    assert caught.value.message == (
        "image host 'localhost' resolves to 127.0.0.1, a loopback address: refused "
        "(allow it with IMAGED_DOWNLOAD_ALLOWED_NETWORKS)"
    )
    answer = await GuardedResolver(LOOPBACK_ALLOWED).resolve("localhost", 80, socket.AF_INET)
    assert [r["host"] for r in answer] == ["127.0.0.1"]


async def test_numeric_hosts_that_reach_the_resolver_are_refused() -> None:
    # aiohttp hands hex forms to the resolver (it takes only digits and dots for IPv4), and getaddrinfo turns
    # them into addresses; the guard refuses them before asking, even where the address would be allowed.
    plain = await aiohttp.ThreadedResolver().resolve("0x7f000001", 80, socket.AF_INET)
    assert [r["host"] for r in plain] == ["127.0.0.1"]
    plain = await aiohttp.ThreadedResolver().resolve("127.1", 80, socket.AF_INET)
    assert [r["host"] for r in plain] == ["127.0.0.1"]
    for host in ("0x7f000001", "127.1", "2130706433"):
        with pytest.raises(BlockedAddress, match="non-standard form"):
            await GuardedResolver(LOOPBACK_ALLOWED).resolve(host, 80, socket.AF_INET)


async def test_one_refused_address_refuses_the_host() -> None:
    inner = ScriptedResolver([["8.8.8.8", "2606:4700:4700::1111", "10.0.0.1"]])
    with pytest.raises(BlockedAddress, match=r"'mixed\.example' resolves to 10\.0\.0\.1, a private address"):
        await GuardedResolver(PUBLIC, inner).resolve("mixed.example", 443, socket.AF_UNSPEC)


async def test_every_lookup_is_checked_so_rebinding_is_refused() -> None:
    inner = ScriptedResolver([["8.8.8.8"], ["169.254.169.254"]])
    guarded = GuardedResolver(PUBLIC, inner)
    first = await guarded.resolve("rebind.example", 80, socket.AF_INET)
    assert [(r["host"], r["port"]) for r in first] == [("8.8.8.8", 80)]  # returned as checked
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254, a link-local address"):
        await guarded.resolve("rebind.example", 80, socket.AF_INET)


async def test_an_answer_that_is_no_address_is_refused_and_an_empty_one_is_a_dns_failure() -> None:
    with pytest.raises(BlockedAddress, match="no IP address"):
        await GuardedResolver(PUBLIC, ScriptedResolver([["not-an-address"]])).resolve("odd.example")
    with pytest.raises(OSError, match="resolved to no address"):
        await GuardedResolver(PUBLIC, ScriptedResolver([[]])).resolve("empty.example")


async def test_a_resolver_passed_in_stays_its_owner_s_to_close() -> None:
    inner = ScriptedResolver([])
    await GuardedResolver(PUBLIC, inner).close()
    assert not inner.closed


async def test_guarded_connector_takes_no_resolver() -> None:
    with pytest.raises(TypeError, match="makes its own resolver"):
        guarded_connector(PUBLIC, resolver=ScriptedResolver([]))


# --- end to end, on loopback ----------------------------------------------------------------------------------

BODY = b"\x89PNG\r\n\x1a\n not really an image"


@dataclass
class Server:
    port: int
    paths: list[str]


@asynccontextmanager
async def serve() -> AsyncIterator[Server]:
    """A server on 127.0.0.1 that answers ``/`` with BODY and ``/hop`` with a redirect to 0.0.0.0 (which
    reaches loopback on Linux), recording every request it sees."""
    paths: list[str] = []

    async def image(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(body=BODY, content_type="image/png")

    async def hop(request: web.Request) -> web.Response:
        paths.append(request.path)
        raise web.HTTPFound(f"http://0.0.0.0:{server.port}/")

    app = web.Application()
    app.router.add_get("/", image)
    app.router.add_get("/hop", hop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = Server(runner.addresses[0][1], paths)
    try:
        yield server
    finally:
        await runner.cleanup()


@asynccontextmanager
async def guarded_session(
    policy: AddressPolicy, **connector_kwargs: object
) -> AsyncIterator[aiohttp.ClientSession]:
    # IPv4 only: wherever localhost also resolves to ::1, that address would be refused with 127.0.0.0/8 alone.
    async with aiohttp.ClientSession(
        connector=guarded_connector(policy, family=socket.AF_INET, **connector_kwargs)
    ) as session:
        yield session


async def fetch(session: aiohttp.ClientSession, url: str, *, redirects: bool = False) -> bytes:
    async with session.get(url, allow_redirects=redirects) as resp:
        assert resp.status == 200
        return await resp.read()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "0.0.0.0", "[::ffff:127.0.0.1]", "0x7f000001"])
async def test_loopback_is_not_fetched_by_default(host: str) -> None:
    async with serve() as server, guarded_session(PUBLIC) as session:
        url = f"http://{host}:{server.port}/"
        if host != "localhost":
            with pytest.raises(BlockedAddress):
                check_url(url, PUBLIC)
        # Straight to the session as well: the connector refuses what check_url would have.
        with pytest.raises(BlockedAddress, match="refused") as caught:
            await fetch(session, url)
        # Not wrapped in a ClientError, which a downloader would count as a transient network fault.
        assert not isinstance(caught.value, aiohttp.ClientError | OSError)
        assert not caught.value.retryable
    assert server.paths == []


async def test_an_allowed_network_is_fetched() -> None:
    async with serve() as server, guarded_session(LOOPBACK_ALLOWED) as session:
        assert await fetch(session, f"http://localhost:{server.port}/") == BODY
        url = check_url(f"http://127.0.0.1:{server.port}/", LOOPBACK_ALLOWED)
        assert await fetch(session, str(url)) == BODY
    assert server.paths == ["/", "/"]


async def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    async with serve() as server, guarded_session(LOOPBACK_ALLOWED) as session:
        with pytest.raises(BlockedAddress, match=r"'0\.0\.0\.0' is an unspecified"):
            await fetch(session, f"http://localhost:{server.port}/hop", redirects=True)
    assert server.paths == ["/hop"]


async def test_the_connector_connects_to_the_addresses_it_checked() -> None:
    # "imaged.test" exists only in this resolver: a response proves aiohttp connected to the checked answer,
    # and one lookup for two requests shows it did not resolve again in between.
    inner = ScriptedResolver([["127.0.0.1"]])
    async with serve() as server:
        connector = GuardedConnector(LOOPBACK_ALLOWED, resolver=GuardedResolver(LOOPBACK_ALLOWED, inner))
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(2):
                assert await fetch(session, f"http://imaged.test:{server.port}/") == BODY
    assert inner.lookups == ["imaged.test"]
    assert server.paths == ["/", "/"]


async def test_a_refused_answer_reaches_the_caller_of_every_concurrent_request() -> None:
    # aiohttp shares one lookup among concurrent requests for the same host; each must see the refusal.
    async with serve() as server, guarded_session(PUBLIC) as session:
        outcomes: Sequence[BaseException | bytes] = await asyncio.gather(
            *(fetch(session, f"http://localhost:{server.port}/") for _ in range(3)), return_exceptions=True
        )
    assert all(isinstance(outcome, BlockedAddress) for outcome in outcomes)
    assert server.paths == []
