"""This machine: its GPUs and who holds their memory (NVML), free disk against what the plan fetches, the
server's ports and who holds them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

from ..errors import ServerError
from ..gpu import NvmlSource
from ..manifest import Manifest
from ..report import human_bytes
from ..runtime import procs
from ..runtime.ports import port_hint, port_holders, port_in_use
from ..state import ServerRecord
from ..xinference import XinferenceClient
from .findings import Finding, blocker, ok, warning

GiB = 1024**3
OTHERS_HOLD_WARN = 1 * GiB  # memory held on a card by processes that are not the stack's
HOME_NEEDS = 2 * GiB  # server.home: logs, Xinference's cache, its auth database
HOME_NEEDS_VENV = 10 * GiB  # ... and a virtualenv per model with server.virtual_env
MARGIN = 2 * GiB  # less than this to spare after the downloads: a warning
DiskUsage = Callable[[str], NamedTuple]  # shutil.disk_usage: (total, used, free)


def our_pids(record: ServerRecord | None) -> set[int]:
    """The processes of the server provision started (its group and its descendants), when it still runs."""
    if record is None or not record.managed or not procs.is_same_process(record):
        return set()
    found = {record.pid, *procs.group_members(record.pgid), *(s.pid for s in procs.descendants(record.pid))}
    for worker in record.workers:
        if procs.is_same_process(worker):
            found |= {worker.pid, *procs.group_members(worker.pgid), *(s.pid for s in procs.descendants(worker.pid))}
    return {p for p in found if p}


def gpu_findings(source: NvmlSource, ours: set[int]) -> tuple[list[Finding], int | None]:
    """One finding per GPU (memory, and the processes holding it); the number of GPUs, None if unknown."""
    gpus = source.gpus()
    if not gpus:
        try:
            import pynvml  # noqa: F401
        except ImportError:
            if shutil.which("nvidia-smi") or os.path.exists("/dev/nvidiactl"):
                return [warning("gpu", "nvidia-ml-py is not installed: provision cannot see this machine's GPUs",
                                "the plan then treats the machine as having no GPU (vLLM candidates are skipped)",
                                "pip install 'provision[gpu]'")], None
        return [ok("gpu", "no NVIDIA GPU (NVML sees none): models run on the CPU")], 0
    holders = source.processes()
    found = []
    for gpu in gpus:
        listed = []
        others = 0
        for proc in holders.get(gpu.index, []):
            name, user = procs.describe(proc.pid)
            mine = proc.pid in ours
            listed.append({"pid": proc.pid, "name": name, "user": user, "used_bytes": proc.used_bytes, "stack": mine})
            if not mine:
                others += proc.used_bytes or 0
        what = (f"{gpu.label} {gpu.name}: {human_bytes(gpu.free_bytes)} free of {human_bytes(gpu.total_bytes)}")
        facts = {"index": gpu.index, "name": gpu.name, "total_bytes": gpu.total_bytes, "free_bytes": gpu.free_bytes,
                 "processes": listed}
        if others >= OTHERS_HOLD_WARN:
            who = ", ".join(f"pid {p['pid']} {p['name']} ({p['user']}) {human_bytes(p['used_bytes'])}"
                            for p in listed if not p["stack"])
            found.append(warning("gpu", f"{what}; {human_bytes(others)} held by other processes: {who}",
                                 "vLLM reserves gpu_memory_utilization x the card's TOTAL memory and refuses to start "
                                 "when less is free",
                                 "stop those processes, lower gpu_memory_utilization (or `auto`), or pin the models "
                                 "to another card with gpu_idx", **facts))
        else:
            mine = [p for p in listed if p["stack"]]
            note = f"; the stack holds {human_bytes(sum(p['used_bytes'] or 0 for p in mine))}" if mine else ""
            found.append(ok("gpu", what + note, **facts))
    return found, len(gpus)


def _existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def disk_findings(manifest: Manifest, need: int | None, need_note: str, disk_usage: DiskUsage) -> list[Finding]:
    """Free space under models_dir against what the plan fetches (need None: not known, need_note says
    why), and under server.home against what the server writes there; one finding where both share a disk.

    blocker: the downloads (and half of what the server needs) do not fit; warning: they fit with less
    than MARGIN to spare."""
    home_needs = HOME_NEEDS_VENV if manifest.server.virtual_env else HOME_NEEDS
    places = [("download.models_dir", manifest.models_dir, need or 0, 0)]
    if not manifest.server.endpoint:
        places.append(("server.home", manifest.server_home, 0, home_needs))
    groups: dict[object, dict] = {}
    found: list[Finding] = []
    for field, path, fetch, home in places:
        existing = _existing(path)
        try:
            if existing is None:
                raise FileNotFoundError("no folder of it exists")
            device, free = os.stat(existing).st_dev, int(disk_usage(str(existing)).free)
        except OSError as exc:
            found.append(warning("disk", f"{field} {path}: free space unknown ({exc.strerror or exc})"))
            continue
        group = groups.setdefault(device, {"fields": [], "paths": [], "free": free, "fetch": 0, "home": 0})
        group["fields"].append(field)
        group["paths"].append(str(path))
        group["fetch"] += fetch
        group["home"] += home
    for group in groups.values():
        free, fetch, home = group["free"], group["fetch"], group["home"]
        parts = []
        if "download.models_dir" in group["fields"]:
            parts.append(f"the downloads need {human_bytes(need)}" if need is not None else f"the downloads: {need_note}")
        if home:
            parts.append(f"the server about {human_bytes(home)}")
        where = ", ".join(f"{f} {p}" for f, p in zip(group["fields"], group["paths"]))
        what = f"{where}: {human_bytes(free)} free; {'; '.join(parts)}"
        facts = {"fields": group["fields"], "paths": group["paths"], "free_bytes": free, "fetch_bytes": fetch,
                 "server_bytes": home}
        if free < fetch + home // 2:
            found.append(blocker("disk", what, "a download that runs out of space fails half-way, and a server that "
                                 "cannot write its log or cache dies",
                                 "free space there, or point download.models_dir / server.home at a larger disk", **facts))
        elif free < fetch + home + MARGIN:
            found.append(warning("disk", what, f"it fits with less than {human_bytes(MARGIN)} to spare",
                                 "free some space there before the next model is added", **facts))
        else:
            found.append(ok("disk", what, **facts))
    return found


def port_findings(manifest: Manifest, record: ServerRecord | None) -> list[Finding]:
    """The ports the server needs: free, held by the server provision started (reused), or held by another
    program (named, with its PID). For server.endpoint: whether it answers."""
    spec = manifest.server
    if spec.endpoint:
        status = XinferenceClient(spec.endpoint).answers(timeout=5)
        if status is None:
            return [blocker("port", f"server.endpoint {spec.endpoint} does not answer",
                            "provision neither starts nor stops that server: `up` needs it running",
                            "start it, or correct server.endpoint")]
        return [ok("port", f"server.endpoint {spec.endpoint} answers (HTTP {status})")]
    wanted = [(spec.host, spec.port, "server.port")]
    if spec.mode == "cluster":
        wanted.append((spec.host, spec.cluster_supervisor_port, "the supervisor port"))
        wanted += [(spec.worker_host, int(a.rsplit(":", 1)[1]), f"worker {i + 1}")
                   for i, a in enumerate(spec.worker_addresses)]
    ours = our_pids(record)
    found = []
    for host, port, what in wanted:
        try:
            busy = port_in_use(host, port)
        except ServerError as exc:
            found.append(blocker("port", exc.message, "xinference-local could not listen there", exc.hint or ""))
            continue
        if not busy:
            found.append(ok("port", f"{what} {host}:{port} is free", port=port))
            continue
        pids = port_holders(port)
        if pids and ours and set(pids) <= ours:
            found.append(ok("port", f"{what} {host}:{port} is held by the server provision started (pid {record.pid}): "
                            "`up` reuses it", port=port, pids=pids))
            continue
        holders = [{"pid": pid, "name": procs.describe(pid)[0], "user": procs.describe(pid)[1]} for pid in pids or []]
        who = ", ".join(f"pid {h['pid']} {h['name']} ({h['user']})" for h in holders) or \
            "a process this user may not see (run doctor as root to name it)"
        found.append(blocker("port", f"{what} {host}:{port} is held by {who}",
                             "xinference-local cannot listen on a port another program holds",
                             port_hint(host, port), port=port, holders=holders))
    return found
