"""Where a homeowner's webhook may point: public addresses, plus what the operator allows.

A webhook URL is chosen by a homeowner but fetched by the broker, from inside the
operator's network: without a check, ``http://127.0.0.1:…`` or
``http://169.254.169.254/…`` lets any homeowner make the broker talk to its own loopback
services or the cloud metadata endpoint. So the host is resolved and *every* address it
resolves to must be public (Python's ``is_global``: no loopback, private, link-local,
multicast, unspecified, reserved, CGNAT 100.64/10, documentation ranges; IPv4 inside
IPv6 — mapped, 6to4, NAT64 — is judged by its IPv4 address, Teredo is refused), or inside
a network the operator allowed (``ztb broker serve --webhook-allow CIDR``).

The check runs when the homeowner sets the URL (a 422 with the reason) and again at every
delivery, where the request then goes to the address that was checked (``Pinned``): a DNS
answer that changes between check and connect (rebinding) cannot move the delivery.
Redirects are not followed (a 3xx is a failed delivery), so a public target cannot bounce
the broker inward either.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from netpolicy import PolicyError

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Resolver = Callable[[str, int], list[str]]

_NAT64 = ip_network("64:ff9b::/96")


class TargetRefused(PolicyError):
    """The URL is not one the broker may call; the message says why (answered 422)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as text (what the broker would connect to)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """The operator's allow-list; a bad entry is a startup error, not a silent gap."""
    return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def why_not_public(address: Address) -> str | None:
    """None for a public unicast address, else what it is (for the refusal message)."""
    if isinstance(address, IPv6Address):
        if address.teredo is not None:
            return "a Teredo tunnel address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return why_not_public(embedded)
    for kind, test in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if test:
            return f"a {kind} address"
    return None if address.is_global else "not a public address"


@dataclass(frozen=True, slots=True)
class Pinned:
    """One checked delivery target: connect to ``address``, name ``host`` in Host and SNI."""

    url: httpx.URL  # the URL with the host replaced by the checked address
    host_header: str
    sni_hostname: str | None


@dataclass(frozen=True, slots=True)
class WebhookTargets:
    allowed: tuple[Network, ...] = ()
    resolve: Resolver = system_resolver

    def check(self, url: str) -> Pinned:
        """Resolve and judge ``url``; raise ``TargetRefused`` naming the first problem."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise TargetRefused("webhook_url is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise TargetRefused("webhook_url must be an http(s) URL with a host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            found = [ip_address(text.split("%")[0]) for text in self.resolve(parsed.host, port)]
        except (OSError, UnicodeError, ValueError):
            found = []
        if not found:
            raise TargetRefused(f"webhook host {parsed.host} does not resolve")
        for address in found:
            problem = why_not_public(address)
            if problem and not any(address in network for network in self.allowed):
                raise TargetRefused(
                    f"webhook host {parsed.host} resolves to {address}, {problem}; "
                    "the broker calls public addresses only (an operator can allow "
                    "private networks with --webhook-allow)"
                )
        host_header = parsed.netloc.decode("ascii").rpartition("@")[2]
        return Pinned(
            url=parsed.copy_with(host=str(found[0])),
            host_header=host_header,
            sni_hostname=parsed.host if parsed.scheme == "https" else None,
        )
