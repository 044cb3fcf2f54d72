"""Which addresses a pool server may have (POOL_ALLOWED_NETWORKS), checked before any connection."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

from app.services.pool.specs import HostNotAllowedError, ServerUnreachableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ``resolve(host, port)``: every address the name stands for (getaddrinfo semantics).
Resolver = Callable[[str, int], list[IPAddress]]


def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, as the SSH client will look them up."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _plain(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` is 10.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_host_allowed(
    host: str,
    port: int,
    allowed_networks: Iterable[IPNetwork],
    *,
    resolve: Resolver | None = None,
) -> list[IPAddress]:
    """Refuse (422 ``server_host_not_allowed``) a host any of whose addresses is outside
    ``allowed_networks`` (empty: any address), or is unspecified (0.0.0.0, ::) or
    multicast. A name is resolved and every address it resolves to is checked; a name that
    does not resolve is 422 ``server_unreachable``. Returns the addresses."""
    networks = list(allowed_networks)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(literal)]
    except ValueError:
        try:
            addresses = (resolve or resolve_addresses)(literal, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise ServerUnreachableError(f"Could not resolve {host}: {exc}") from None
    if not addresses:
        raise ServerUnreachableError(f"{host} resolves to no address")
    for address in map(_plain, addresses):
        refused = address.is_unspecified or address.is_multicast
        if not refused and networks:
            refused = not any(address in network for network in networks)
        if refused:
            raise HostNotAllowedError(
                f"{host} ({address}) is not in the networks pool servers may be in "
                "(POOL_ALLOWED_NETWORKS)",
                errors={"host": ["This address is not allowed for pool servers."]},
            )
    return addresses
