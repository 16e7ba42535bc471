"""Ports: whether a server can listen where the manifest says, and who holds the port when it cannot."""

from __future__ import annotations

import errno
import socket
import time

import psutil

from .. import netaddr
from ..errors import ServerError
from ..state import ServerRecord
from .procs import is_same_process

EXECUTABLE = "xinference-local"


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails with "address in use" (0.0.0.0 collides with 127.0.0.1 and back).

    The probe sets SO_REUSEADDR as uvicorn does, so TIME_WAIT sockets left by our polling don't count.
    Raises ServerError when the address cannot be bound for another reason (not this machine's, < 1024).
    """
    try:
        infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerError(f"server.host {host!r} is not a known address: {exc}") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                hint = {
                    errno.EADDRNOTAVAIL: "server.host must be 127.0.0.1, 0.0.0.0 or an address of this machine",
                    errno.EACCES: "ports below 1024 need root: pick a server.port above 1023",
                }.get(exc.errno)
                raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hint) from exc
    return False


def wait_until_free(addresses, seconds: float) -> list[tuple[str, int]]:
    """Wait until nothing listens on any (host, port) any more, for at most `seconds`; the ones still held.

    A server's ports are free only once the last process holding its sockets has exited, which can be a
    moment after the process provision recorded is gone: a restart waits for that before it starts anew."""
    deadline = time.monotonic() + seconds
    pending = list(dict.fromkeys(addresses))
    while True:
        pending = [(host, port) for host, port in pending if port_in_use(host, port)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.2)


def server_ports(record: ServerRecord) -> list[tuple[str, int]]:
    """Every (host, port) a recorded server listened on: its API, a cluster's actor port and its workers."""
    found = [(record.host, record.port)] if record.port else []
    if record.supervisor_port:
        found.append((record.host, record.supervisor_port))
    for worker in record.workers:
        host, _, port = worker.address.rpartition(":")
        if port.isdigit():
            found.append((host, int(port)))
    return found


def port_holders(port: int) -> list[int] | None:
    """The PIDs listening on TCP `port` (any address), or None when this user may not see them all."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    found = {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    if None in found:  # a socket of another user's process: its PID is hidden from us
        return None if found == {None} else sorted(p for p in found if p is not None)
    return sorted(found)


def check_port(host: str, port: int, record: ServerRecord | None = None) -> bool:
    """False: the port is free. True: the server in `record` (ours, same process) holds it, so reuse it.

    Raises ServerError when any other program holds it.
    """
    if not port_in_use(host, port):
        return False
    if record is not None and record.managed and record.port == port and is_same_process(record):
        if record.host == host:
            return True
        raise ServerError(
            f"port {port} is held by the server provision started earlier on {record.host} (pid {record.pid}), "
            f"not on {host}",
            hint="stop it with `provision down` first, then bring the stack up again",
        )
    raise ServerError(
        f"port {port} is already in use on {host} ({host}:{port}): cannot start {EXECUTABLE} there",
        hint=port_hint(host, port),
    )


def port_hint(host: str, port: int) -> str:
    return (
        f"pick another server.port in the manifest, or set server.endpoint: {netaddr.url_for(host, port)} to use the "
        f"server already there (`ss -ltnp 'sport = :{port}'` shows which program holds it)"
    )

