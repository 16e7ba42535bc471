"""Addresses, in one place: which hosts are loopback, what a wildcard listen address is reached through,
and the URL for a host and port.

A server bound to a wildcard (`0.0.0.0`, `::`, or empty) listens everywhere, but that is no address to
connect to: a client on this machine uses the loopback address of the same family (`127.0.0.1`, `::1`).
"""

from __future__ import annotations

import ipaddress
import re

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


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name (None: it is one)."""
    if not isinstance(host, str) or not host.strip():
        return "is empty: write 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    bare = unbracket(host.strip())
    if is_wildcard(bare):
        return None
    try:
        ipaddress.ip_address(bare)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[^:]+:\d+", bare):
        return f"{host!r} holds a port: write the host alone and the port as server.port"
    if re.fullmatch(r"[\d.]+", bare) or len(bare) > 253 or not all(_HOSTNAME_LABEL.fullmatch(p) for p in bare.rstrip(".").split(".")):
        return f"{_short(host)} is not a host name or address (such as 127.0.0.1, 0.0.0.0 or gpu-1.example.org)"
    return None


def _short(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def docker_cannot_reach(host: str, docker_host: str) -> str | None:
    """Why RAGFlow in a container cannot reach a server listening on `host` of this machine (None: it can)."""
    if not is_loopback(host):
        return None
    return (f"Xinference listens on {host} only: RAGFlow in Docker cannot reach it through {docker_host}; "
            "set server.host: 0.0.0.0 (authentication stays on) and open the port in the firewall")
