"""Addresses, in one place: which hosts are loopback, what a wildcard listen address is reached through,
and the URL for a host and port.

A server bound to a wildcard (`0.0.0.0`, `::`, or empty) listens everywhere, but that is no address to
connect to: a client on this machine uses the loopback address of the same family (`127.0.0.1`, `::1`).
"""

from __future__ import annotations

import ipaddress

WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "*": "127.0.0.1"}


def unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def bracket(host: str) -> str:
    """An IPv6 literal as it goes into a URL: `[::1]`."""
    host = unbracket(host)
    return f"[{host}]" if ":" in host else host


def is_wildcard(host: str) -> bool:
    return host.strip().lower() in WILDCARDS


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also `::ffff:127.0.0.1`): only this machine can connect."""
    host = unbracket(host.strip()).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def connect_host(host: str) -> str:
    """The address a client on this machine connects to for a server listening on `host`."""
    return WILDCARDS.get(host.strip().lower(), unbracket(host.strip()))


def url_for(host: str, port: int, scheme: str = "http", path: str = "") -> str:
    """`http://HOST:PORT` (+ path) to reach a server listening on host:port from this machine."""
    return f"{scheme}://{bracket(connect_host(host))}:{port}{path}"


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(unbracket(host))
        return True
    except ValueError:
        return False
