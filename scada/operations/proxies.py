"""Who the client is when the citizens' listener sits behind the city's reverse proxy.

Behind a proxy (for TLS) every connection comes from the proxy: the TCP peer is the proxy,
so every citizen would share one rate-limit bucket and the audit would name the proxy. The
proxy says who it serves in ``X-Forwarded-For``, appending the address it received the
request from to what the request already had; anything left of that the client wrote
itself. So the client is found from the right:

* the TCP peer not in ``http.trusted_proxies`` (the default list is empty): the peer is the
  client, and any ``X-Forwarded-For`` it sent is ignored (anyone can write one);
* the peer trusted: walk ``X-Forwarded-For`` from the right, skipping the trusted proxies (a
  chain: a load balancer in front of the TLS proxy); the first address that is not one is
  the client. Every entry trusted: the leftmost (a request from the proxies' own network);
  no header: the peer itself (the proxy's health check);
* an entry that is not an address (``unknown``, a host name, garbage) where the walk reads
  it: the peer, a warning logged at most once a minute (with how many since). Never a
  refusal: the citizen's report is accepted, only counted in the proxy's bucket.

``X-Forwarded-For`` only, not RFC 7239 ``Forwarded``: what the city's proxies write by
default (nginx ``$proxy_add_x_forwarded_for``, HAProxy ``option forwardfor``, Apache
mod_proxy, Traefik, Caddy). Reading both would let a client pick its address: a proxy that
appends to one header passes the other through untouched, as the client wrote it.

Pure: no I/O but the log; :mod:`scada.operations.http` calls :meth:`ClientResolver.client`
once per request (an aiohttp middleware), so the rate limit, the report's recorded client
and its audit all see the same address.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence

import structlog

log = structlog.get_logger("scada.http")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
HEADER = "X-Forwarded-For"
LOG_EVERY_S = 60.0  # a proxy sending garbage sends it with every request: one warning a minute
SHOWN_CHARS = 200  # of a garbage header in the log


def parse_network(text: str) -> Network:
    """One entry of ``http.trusted_proxies``: an address (a network of one) or a CIDR network,
    IPv4 or IPv6; ValueError saying what is wrong."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                "expected an IP address or a network (CIDR), e.g. 10.0.0.5, 10.0.0.0/24 or 2001:db8::/64; "
                "not a host name: the proxy is known by the address it connects from"
            ) from exc
        raise ValueError(f"{text} has host bits set: the network is {loose}") from None
    if net.prefixlen == 0:
        raise ValueError(f"{text} trusts every address: any client could then write its own address")
    return _unmapped_network(net)


def _unmapped(a: Address) -> Address:
    """An IPv4-mapped IPv6 address (a dual-stack socket's ::ffff:10.0.0.5) as the IPv4 one."""
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _unmapped_network(net: Network) -> Network:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        v4 = net.network_address.ipv4_mapped
        if v4 is not None:
            return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def parse_address(text: str) -> Address | None:
    """One entry of X-Forwarded-For: ``10.0.0.5``, ``2001:db8::1``, with a port where some
    proxies add one (``10.0.0.5:4711``, ``[2001:db8::1]:4711``) or brackets; None if it is not
    an address."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        text, port = text.split(":")
        if not _is_port(":" + port):
            return None
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


def is_trusted(a: Address, trusted: Iterable[Network]) -> bool:
    return any(a in net for net in trusted)  # an IPv4 address is never in an IPv6 network


class ClientResolver:
    """The client's address of one request (see the module's text); keeps only the rate of its
    warnings."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, log_every_s: float = LOG_EVERY_S) -> None:
        self.monotonic = monotonic
        self.log_every_s = log_every_s
        self.garbage = 0  # headers from a trusted proxy that named no client (all time)
        self._unlogged = 0
        self._next_log = -float("inf")

    def client(self, peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]) -> str | None:
        """The client of a request from TCP ``peer`` whose ``X-Forwarded-For`` header lines are
        ``forwarded`` (several lines are one list, in order), with the proxies ``trusted``."""
        if not trusted or not forwarded or peer is None:
            return peer
        address = parse_address(peer)
        if address is None or not is_trusted(address, trusted):
            return peer  # its header is the client's own writing
        entries = ",".join(forwarded).split(",")
        client: Address | None = None
        for entry in reversed(entries):
            hop = parse_address(entry)
            if hop is None:
                self._garbage(peer, forwarded)
                return peer
            client = hop
            if not is_trusted(hop, trusted):
                break
        return peer if client is None else str(client)

    def _garbage(self, peer: str, forwarded: Sequence[str]) -> None:
        self.garbage += 1
        self._unlogged += 1
        now = self.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + self.log_every_s
        header = ", ".join(forwarded)
        log.warning(
            "http_forwarded_unreadable",
            peer=peer,
            header=header[:SHOWN_CHARS] + ("..." if len(header) > SHOWN_CHARS else ""),
            count=self._unlogged,  # since the last warning: one per request of a proxy gone wrong
            why=f"{HEADER} from a trusted proxy names no client address: the proxy's address is used",
        )
        self._unlogged = 0
