"""
Who a client is, for counting, sans-IO: IPv4 per address, IPv6 per prefix (/64 by default:
one subscriber usually gets a whole /64, so counting single IPv6 addresses counts nothing).
An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is its IPv4 address. Only text that parses
strictly as an address becomes a key; anything else is refused by the caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["MAX_TEXT", "AddressPolicy", "IPAddress", "IPNetwork", "parse_address", "parse_network"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_TEXT = 45  # the longest textual IPv6 address: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_address(text: str) -> IPAddress | None:
    """A bare IPv4 or IPv6 address (no port, brackets or zone), mapped IPv6 turned into IPv4; else None."""
    if not 2 <= len(text) <= MAX_TEXT or not text.isascii() or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _unmapped(address)


def parse_network(text: str) -> IPNetwork:
    """A trusted-proxy entry: an address or a CIDR, in either family; mapped forms become IPv4.
    Raises ValueError (with a message naming no value) for anything else."""
    if not text.isascii() or "%" in text or len(text) > MAX_TEXT + 4:
        raise ValueError("not an address or CIDR")
    network = ipaddress.ip_network(text, strict=True)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AddressPolicy:
    """Turns a peer address into the key every per-address limit counts, and knows the proxies."""

    def __init__(self, ipv6_prefix: int, trusted_proxies: Iterable[str] = (), relays: Iterable[str] = ()) -> None:
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError("the IPv6 prefix length must lie in 1..128")
        self.ipv6_prefix = ipv6_prefix
        self._proxies = tuple(parse_network(p) for p in trusted_proxies)
        self._relays = tuple(parse_network(r) for r in relays)

    def key(self, address: IPAddress) -> str:
        if isinstance(address, ipaddress.IPv4Address):
            return str(address)
        return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))

    def trusted(self, address: IPAddress) -> bool:
        """A reverse proxy whose client-address header is believed (never a relay)."""
        return not self.relay(address) and _within(address, self._proxies)

    def relay(self, address: IPAddress) -> bool:
        """An Oblivious HTTP relay: its requests count under its own address."""
        return _within(address, self._relays)

    def exempt(self, address: IPAddress) -> bool:
        """Not held to the per-address connection cap: a proxy or a relay carries many clients."""
        return self.relay(address) or self.trusted(address)


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)
