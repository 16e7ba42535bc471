"""Placement on a cluster's workers: which workers the supervisor lists, whether a model's worker_ip names
one, and whether a GPU is on the worker a model asks for. Pure.

Xinference names a worker by the address its actor pool listens on, `host:port`. A launch's `worker_ip`
is a comma-separated list whose entries are either such an address (that very worker) or a bare host
(every worker on that host); an entry that matches no worker fails the launch with "Worker ip address
... is not in the cluster." The plan makes the same check before anything is launched.
"""

from __future__ import annotations

import ipaddress
from typing import Any


def worker_addresses(cluster_info: Any) -> list[str]:
    """The workers in a GET /v1/cluster/info answer (a list of nodes; the supervisor's node is left out)."""
    nodes = (cluster_info.get("data") or cluster_info.get("nodes")) if isinstance(cluster_info, dict) else cluster_info
    found = []
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, dict) and str(node.get("node_type", "")).lower() == "worker" and node.get("ip_address"):
            found.append(str(node["ip_address"]))
    return list(dict.fromkeys(found))


def host_of(address: str) -> str:
    """`10.0.0.5` of `10.0.0.5:40001`, `fd00::1` of `[fd00::1]:40001`; an address without a port (an IPv6
    literal too) is its own host."""
    if address.startswith("["):
        return address[1:address.find("]")] if "]" in address else address
    try:
        ipaddress.ip_address(address)
        return address
    except ValueError:
        pass
    host, colon, port = address.rpartition(":")
    return host if colon and port.isdigit() else address


def entries(worker_ip: str | None) -> list[str]:
    return [item.strip() for item in (worker_ip or "").split(",") if item.strip()]


def worker_ip_problem(worker_ip: str | None, workers: list[str] | None) -> str | None:
    """Why `worker_ip` names no worker of the cluster, or None (no worker_ip, or the workers are not known)."""
    if not worker_ip or workers is None:
        return None
    hosts = {host_of(w) for w in workers}
    missing = [e for e in entries(worker_ip) if e not in workers and e not in hosts]
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"worker {', '.join(missing)} {verb} not in the cluster (workers: {', '.join(workers) or 'none'})"


def same_worker(address: str | None, worker_ip: str) -> bool:
    """Whether a GPU reported for worker `address` (None: this machine) may take a model placed on `worker_ip`:
    one of its entries is on the GPU's host (the workers of one host share its GPUs)."""
    if address is None:
        return True
    host = host_of(address)
    return any(host_of(entry) == host for entry in entries(worker_ip))
