"""The network guard: which addresses imaged may fetch from, enforced where aiohttp connects.

Image URLs come from provider replies, and a reply is not to be trusted: a hostile one (or anyone on its path)
can name ``http://169.254.169.254/`` and have imaged fetch the cloud's metadata, or any service that only
listens on an internal network. Checking the URL's text is not enough: a name can resolve to an internal
address, and resolve again to another one between a check and the connection (DNS rebinding). So the check
runs on the addresses themselves, at the one place they are used:

* :class:`GuardedResolver` resolves a name, checks every address it got (one refused address refuses the
  host), and hands only those addresses to aiohttp, which connects to them without resolving again;
* aiohttp does not resolve IP literals, so :class:`GuardedConnector` checks the host of every request it
  connects for (redirects included) before it connects;
* :func:`check_url` runs the same static checks on a URL before any connection is tried, with the URL-level
  rules (http(s) only, no user info) on top.

By default only globally routable addresses pass: no private, loopback, link-local (cloud metadata),
shared (100.64.0.0/10, Alibaba Cloud's metadata), unspecified, multicast, reserved, site-local or
unique-local address, nor an IPv6 form that embeds one of them (IPv4-mapped, IPv4-compatible, 6to4,
Teredo, NAT64). An explicit list of networks (``127.0.0.0/8`` for a local emulator, ``10.0.0.0/8`` for a
private deployment) lets those through too.

Refusals are :class:`RefusedURL` / :class:`BlockedAddress`, download errors that are never retried: asking
again does not change the answer.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from .errors import DownloadError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the setting that lists the networks image downloads may reach besides public addresses
DOWNLOAD_SETTING = "IMAGED_DOWNLOAD_ALLOWED_NETWORKS"

SCHEMES = frozenset({"http", "https"})


class RefusedURL(DownloadError):
    """The network guard will not fetch this URL. Never retryable: the same URL is refused again.

    Messages name the host and why, never the whole URL: it may carry credentials.
    """

    def __init__(self, message: str, *, code: str = "bad_url") -> None:
        super().__init__(message, code=code, retryable=False)


class BlockedAddress(RefusedURL):
    """The URL's host is, or resolves to, an address the policy refuses."""

    def __init__(self, message: str, *, host: str, address: str | None, reason: str) -> None:
        super().__init__(message, code="blocked_address")
        self.host = host
        self.address = address
        self.reason = reason


def _net(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr)


# Special-purpose ranges (IANA registries), each with the words a refusal uses. The first match names the
# reason, so the narrower ranges come first; whatever Python does not count as global is refused after them.
_V4_SPECIAL: tuple[tuple[IPNetwork, str], ...] = tuple(
    (_net(cidr), why)
    for cidr, why in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address, where cloud metadata services can live"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address, where cloud metadata services live"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_SPECIAL: tuple[tuple[IPNetwork, str], ...] = tuple(
    (_net(cidr), why)
    for cidr, why in (
        ("::/128", "the unspecified address"),
        ("::1/128", "the loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/32", "a Teredo tunnel address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a unique-local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
_V6_GLOBAL_UNICAST = _net("2000::/3")
_IPV4_COMPATIBLE = _net("::/96")
_NAT64 = _net("64:ff9b::/96")


def _unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address a socket reaches with it."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip in _IPV4_COMPATIBLE:
        found.append(("an IPv4-compatible form of", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip in _NAT64:
        found.append(("a NAT64 form of", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        found.append(("a 6to4 form of", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("a Teredo form of", client), ("a Teredo address through", server)]
    return found


def special_purpose(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"a loopback address"``), or None if it is globally routable."""
    if isinstance(ip, ipaddress.IPv4Address):
        for net, why in _V4_SPECIAL:
            if ip in net:
                return why
        # Python's list of special-purpose ranges catches what the table does not name.
        return None if ip.is_global else "a special-purpose address that is not globally routable"
    if ip.ipv4_mapped is not None:
        # A socket given ::ffff:a.b.c.d reaches a.b.c.d: the IPv4 address is all that counts.
        mapped_why = special_purpose(ip.ipv4_mapped)
        return None if mapped_why is None else f"an IPv4-mapped form of {ip.ipv4_mapped}, {mapped_why}"
    if ip not in (ipaddress.IPv6Address(0), ipaddress.IPv6Address(1)):  # :: and ::1 embed no address
        for form, inner in _embedded(ip):
            inner_why = special_purpose(inner)
            if inner_why is not None:
                return f"{form} {inner}, {inner_why}"
    for net, why in _V6_SPECIAL:
        if ip in net:
            return why
    if ip in _IPV4_COMPATIBLE:
        return "a deprecated IPv4-compatible address"
    if ip in _NAT64:
        # the NAT64 form of a public IPv4 address (checked above): how IPv6-only hosts reach IPv4 ones
        return None
    if ip not in _V6_GLOBAL_UNICAST:
        return "a reserved address"
    return None if ip.is_global else "a special-purpose address that is not globally routable"


def _shown(text: str, limit: int = 100) -> str:
    """``text`` quoted for a message, cut short: hosts come from untrusted replies."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _ends_in_number(host: str) -> bool:
    """Whether a host's last label is a number (decimal, or hex with ``0x``), as in ``127.1``, ``2130706433``
    or ``0x7f000001``.

    Such hosts are numeric IPv4 forms to the C library (and to browsers, per the WHATWG URL standard), and no
    real domain ends in one. The same rule as the URL standard's "ends in a number".
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1]
    if last[:2].lower() == "0x":
        return all(c in string.hexdigits for c in last[2:])
    return last.isascii() and last.isdigit()


class AddressPolicy:
    """Which addresses may be connected to: public ones, and those in the allowed networks.

    ``what`` names the kind of URL in messages (``"image"``: "image host 'x' ..."); ``setting`` is the setting
    that lists allowed networks, named in messages so an operator knows what to change (None: not named).
    """

    def __init__(
        self,
        allowed_networks: Iterable[str] = (),
        *,
        what: str = "image",
        setting: str | None = DOWNLOAD_SETTING,
    ) -> None:
        networks: list[IPNetwork] = []
        for value in allowed_networks:
            try:
                # strict: "10.0.0.1/8" is refused rather than guessed to mean the host or the network
                networks.append(ipaddress.ip_network(value.strip()))
            except (ValueError, TypeError, AttributeError) as exc:
                where = f"{setting}: " if setting else ""
                raise ValueError(
                    f"{where}{value!r} is not a network in CIDR form (such as 10.0.0.0/8 or fd00::/8): {exc}"
                ) from None
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self.what = what
        self.setting = setting

    def refusal(self, ip: IPAddress) -> str | None:
        """Why the policy refuses ``ip`` (``"a loopback address"``), or None if it allows it."""
        # An IPv4-mapped address reaches the IPv4 one, so it is allowed wherever that is.
        for candidate in {ip, _unmapped(ip)}:
            if any(candidate.version == net.version and candidate in net for net in self.networks):
                return None
        return special_purpose(ip)

    def allows(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is in an allowed network or globally routable (embedded IPv4 addresses included)."""
        return self.refusal(ip) is None

    def describe(self) -> str:
        """The policy in a few words, for logs."""
        if not self.networks:
            return "public addresses only"
        return "public addresses and " + ", ".join(str(net) for net in self.networks)

    def check_host(self, host: str) -> None:
        """Refuse ``host`` if it is an IP literal the policy refuses, or a numeric form that is no plain IP
        literal (``127.1``, ``2130706433``, ``0x7f000001``, ``127.0.0.1.``). A name passes: it is checked once
        resolved, by :class:`GuardedResolver`.

        ``host`` is as a URL parser gives it: IPv6 without brackets, possibly with a zone (``fe80::1%25eth0``).
        """
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if ":" in host:
                raise BlockedAddress(
                    f"{self.what} host {_shown(host)} is no valid IPv6 address: refused",
                    host=host,
                    address=None,
                    reason="an invalid IPv6 address",
                ) from None
            if host and _ends_in_number(host):
                # The C library would turn it into an address (127.1 is 127.0.0.1); refuse the guesswork.
                raise BlockedAddress(
                    f"{self.what} host {_shown(host)} is a numeric address in a non-standard form "
                    "(write IPv4 as four decimal numbers, a.b.c.d): refused",
                    host=host,
                    address=None,
                    reason="a non-standard numeric address",
                ) from None
            return
        why = self.refusal(ip)
        if why is not None:
            raise self.blocked(host, ip, why, resolved=False)

    def check_resolved(self, host: str, results: Iterable[ResolveResult]) -> None:
        """Refuse ``host`` unless the policy allows every address it resolved to."""
        for result in results:
            try:
                ip = ipaddress.ip_address(result["host"])
            except ValueError:
                # A resolver is to answer with addresses; anything else cannot be checked, so it is refused.
                raise BlockedAddress(
                    f"{self.what} host {_shown(host)} resolves to {_shown(result['host'])}, no IP address: refused",
                    host=host,
                    address=result["host"],
                    reason="no IP address",
                ) from None
            why = self.refusal(ip)
            if why is not None:
                raise self.blocked(host, ip, why, resolved=True)

    def blocked(self, host: str, ip: IPAddress, why: str, *, resolved: bool) -> BlockedAddress:
        """The error refusing ``host`` for its address ``ip``."""
        hint = f" (allow it with {self.setting})" if self.setting else ""
        what = f"resolves to {ip}, {why}" if resolved else f"is {why}"
        return BlockedAddress(
            f"{self.what} host {_shown(host)} {what}: refused{hint}", host=host, address=str(ip), reason=why
        )


def check_url(url: str, policy: AddressPolicy) -> URL:
    """Refuse a URL the guard will not fetch, before any connection; return it parsed as aiohttp will fetch it.

    Refused (:class:`RefusedURL`): a URL that does not parse, a scheme other than http(s), no host, user info
    (``user@host``: nothing imaged fetches carries credentials, and the ``@`` is a classic way to disguise the
    host). Refused (:class:`BlockedAddress`): an IP-literal host the policy refuses (``127.0.0.1``,
    ``[::ffff:127.0.0.1]``), a non-standard numeric host (``127.1``, ``2130706433``). A host name passes here;
    :class:`GuardedResolver` checks its addresses when aiohttp connects.

    The URL is parsed by both ``urllib.parse`` and yarl (aiohttp's parser): they read some hosts differently
    (yarl folds full-width digits to ASCII, for one), so the host each of them sees must pass. Fetching the
    returned URL spares aiohttp a third reading.
    """
    try:
        parts = urlsplit(url)
        parsed = URL(url)
    except ValueError:
        raise RefusedURL(f"{policy.what} URL cannot be parsed: refused") from None
    if parts.scheme.lower() not in SCHEMES or parsed.scheme not in SCHEMES:
        raise RefusedURL(
            f"{policy.what} URL has scheme {_shown(parts.scheme, 20)}, not http or https: refused",
            code="bad_scheme",
        )
    if "@" in parts.netloc or parsed.raw_user is not None or parsed.raw_password is not None:
        raise RefusedURL(f"{policy.what} URL carries user info (user@host): refused", code="userinfo")
    hosts = [parts.hostname, parsed.raw_host]
    for host in hosts:
        if not host:
            raise RefusedURL(f"{policy.what} URL has no host: refused", code="no_host")
        policy.check_host(host)
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves with another resolver (by default aiohttp's ThreadedResolver: getaddrinfo, so /etc/hosts counts)
    and returns its answer only if the policy allows every address in it; raises :class:`BlockedAddress`
    otherwise.

    aiohttp connects to exactly the addresses returned, so what was checked is what is connected to: no second
    lookup for DNS rebinding to slip into. BlockedAddress is no OSError on purpose: aiohttp turns a resolver's
    OSError into a ClientConnectorDNSError (a retryable network fault to callers), and lets other exceptions
    through unchanged to the caller of ``session.get``.

    A resolver passed in stays its owner's to close. (A TCPConnector does not close a resolver it was given;
    the default one holds nothing to close.)
    """

    def __init__(self, policy: AddressPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._owned = resolver is None
        self._resolver = resolver if resolver is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # aiohttp resolves hex and other hosts it does not take for IP literals: the same rules as check_url.
        self.policy.check_host(host)
        results = await self._resolver.resolve(host, port, family)
        if not results:
            # An OSError: aiohttp reports it as a DNS failure (an empty answer would trip an assert in it).
            raise OSError(f"{self.policy.what} host {_shown(host)} resolved to no address")
        self.policy.check_resolved(host, results)
        return results

    async def close(self) -> None:
        if self._owned:
            await self._resolver.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that checks each request's host before connecting for it.

    aiohttp never passes IP literals to the resolver, so without this ``http://127.0.0.1/`` (or a redirect to
    it) would be connected to unchecked. Names are left to the resolver, a :class:`GuardedResolver` when the
    connector comes from :func:`guarded_connector`.
    """

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        self.policy.check_host(req.url.raw_host or "")
        return await super().connect(req, traces, timeout)


def guarded_connector(policy: AddressPolicy, **connector_kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that connects only to addresses ``policy`` allows; the other arguments go to TCPConnector.

    Call it with the event loop running, as TCPConnector itself. A session using it must not go through a
    proxy: the proxy would resolve names itself, out of the guard's sight (aiohttp uses one only when asked,
    or with ``trust_env=True``).
    """
    if "resolver" in connector_kwargs:
        raise TypeError("guarded_connector makes its own resolver: pass none")
    # aiohttp caches what the resolver returned, i.e. addresses already checked, so the cache cannot let an
    # unchecked address through; every connection is still made to the addresses handed over, never to a fresh
    # lookup. A short lifetime keeps a changed DNS record from being followed late, and spares a burst of
    # downloads from one host a lookup each.
    connector_kwargs.setdefault("ttl_dns_cache", 10)
    return GuardedConnector(policy, resolver=GuardedResolver(policy), **connector_kwargs)
