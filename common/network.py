"""Listening addresses of the project's servers: checking ``--host``, choosing the address family, writing URLs.

The web consoles and the model service take the address to listen on from
``--host``. An IPv6 address may be written with or without the brackets of
a URL (``[::1]`` or ``::1``); the functions here accept both.
"""

from __future__ import annotations

import ipaddress
import socket

from common.exceptions import ConfigError

#: Host name that always means this machine only; every other name may resolve to a reachable address.
LOCALHOST = "localhost"


def listen_host_option(text: str) -> str:
    """Check the value of a ``--host`` option and return it without IPv6 brackets.

    Raises
    ------
    ConfigError
        If ``text`` is empty or only whitespace. The socket layers take an
        empty host as every interface, so a blank option would expose the
        server without a word.
    """
    if not text.strip():
        raise ConfigError(
            f"--host {text!r} is empty; pass 127.0.0.1 to listen on this machine only, "
            "or 0.0.0.0 (or ::) to listen on every interface"
        )
    return bare_host(text)


def is_loopback(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``, ``[::1]``).

    An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) counts as its IPv4 address.
    """
    bare = bare_host(host)
    if bare.lower() == LOCALHOST:
        return True
    address = _ip_address(bare)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def url_host(host: str) -> str:
    """Return ``host`` as it is written in a URL: an IPv6 address in brackets, anything else unchanged."""
    bare = bare_host(host)
    address = _ip_address(bare)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{bare}]"
    return bare


def listen_family(host: str, port: int) -> socket.AddressFamily:
    """Return the address family to listen on ``host`` with: IPv6 for an IPv6 address, else IPv4.

    A host name is resolved. It gets IPv4 when it has an IPv4 address, so
    that ``localhost`` keeps meaning 127.0.0.1, and IPv6 when it has only
    IPv6 addresses.

    Raises
    ------
    socket.gaierror
        If the host name does not resolve.
    """
    bare = bare_host(host)
    address = _ip_address(bare)
    if address is not None:
        return socket.AF_INET6 if address.version == 6 else socket.AF_INET
    families = {info[0] for info in socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)}
    return socket.AF_INET if socket.AF_INET in families or not families else socket.AF_INET6


def bare_host(host: str) -> str:
    """Return ``host`` without the brackets that a URL puts around an IPv6 address."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
