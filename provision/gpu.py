"""GPU facts behind one small interface: each GPU's total and free memory, from wherever they can be had.

    NvmlSource()              the GPUs of this machine, through NVML (nvidia-ml-py); none found -> []
                              (.processes(): who holds memory on each, for `provision doctor`)
    ClusterInfoSource(client) a remote server's GPUs, from GET /v1/cluster/info?detailed=true
    StaticSource([...])       numbers given by hand (tests)

A source answers `gpus() -> list[Gpu]`. An empty list means "no GPU"; a source that cannot tell raises
(ClusterInfoSource: the server's XinferenceError), and the caller records the facts as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

GiB = 1024**3


@dataclass(frozen=True)
class Gpu:
    index: int  # the index Xinference's gpu_idx means (per worker on a cluster)
    name: str
    total_bytes: int
    free_bytes: int
    worker: str | None = None  # a cluster worker's address; None for this machine
    estimated: bool = False  # split evenly from a worker's sums (cluster info has no per-GPU figures)

    @property
    def label(self) -> str:
        return f"GPU {self.index}" + (f" of {self.worker}" if self.worker else "")


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds memory on a GPU, as NVML reports it (used_bytes None: NVML cannot tell)."""

    pid: int
    used_bytes: int | None


class GpuSource(Protocol):
    def gpus(self) -> list[Gpu]: ...


class StaticSource:
    def __init__(self, gpus: list[Gpu]):
        self._gpus = list(gpus)

    def gpus(self) -> list[Gpu]:
        return list(self._gpus)


class NvmlSource:
    """This machine's NVIDIA GPUs. No nvidia-ml-py, no NVML library, no driver, no device: [] (never raises).

    `visible_devices` is the server's CUDA_VISIBLE_DEVICES: Xinference numbers the GPUs it is shown from 0,
    so gpu_idx 0 is the first one listed there (ids or GPU-/MIG- UUIDs).
    """

    def __init__(self, visible_devices: str | None = None):
        self.visible_devices = visible_devices

    def gpus(self) -> list[Gpu]:
        try:
            import pynvml
        except ImportError:
            return []
        try:
            pynvml.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable NVIDIA GPU here
            return []
        try:
            return [self._gpu(pynvml, index, handle) for index, handle in enumerate(self._handles(pynvml))]
        except Exception:
            return []
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass

    def processes(self) -> dict[int, list[GpuProcess]]:
        """The processes holding memory on each GPU (keyed by Gpu.index), compute and graphics alike;
        {} where NVML cannot be used (never raises)."""
        try:
            import pynvml
        except ImportError:
            return {}
        try:
            pynvml.nvmlInit()
        except Exception:
            return {}
        try:
            return {index: self._holders(pynvml, handle) for index, handle in enumerate(self._handles(pynvml))}
        except Exception:
            return {}
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass

    @staticmethod
    def _holders(pynvml, handle) -> list[GpuProcess]:
        found: dict[int, GpuProcess] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                listed = getattr(pynvml, getter)(handle)
            except Exception:  # not supported on this card or driver, or absent from this nvidia-ml-py
                continue
            for info in listed or []:
                used = getattr(info, "usedGpuMemory", None)
                used = int(used) if isinstance(used, int) and used >= 0 else None  # NVML_VALUE_NOT_AVAILABLE
                pid = int(info.pid)
                if pid not in found or (found[pid].used_bytes or 0) < (used or 0):
                    found[pid] = GpuProcess(pid, used)
        return sorted(found.values(), key=lambda p: -(p.used_bytes or 0))

    def _handles(self, pynvml) -> list:
        count = pynvml.nvmlDeviceGetCount()
        if self.visible_devices is None or not self.visible_devices.strip():
            return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        handles = []
        for item in self.visible_devices.split(","):
            item = item.strip()
            if item.isdigit():
                if int(item) >= count:
                    break  # CUDA stops at the first invalid id
                handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(item)))
            elif item.startswith(("GPU-", "MIG-")):
                try:
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(item.encode()))
                except pynvml.NVMLError:  # a UUID prefix (CUDA takes those, NVML does not)
                    break
            else:
                break  # "-1", "" or garbage: CUDA sees nothing from here on
        return handles

    @staticmethod
    def _gpu(pynvml, index: int, handle) -> Gpu:
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        return Gpu(index, name, int(memory.total), int(memory.free))


class ClusterInfoSource:
    """A (remote) server's GPUs from GET /v1/cluster/info?detailed=true; see parse_cluster_info."""

    def __init__(self, client):
        self.client = client  # an XinferenceClient; its errors propagate (the facts are then unknown)

    def gpus(self) -> list[Gpu]:
        return parse_cluster_info(self.client.cluster_info(detailed=True))


def parse_cluster_info(body: Any) -> list[Gpu]:
    """The GPUs of every worker in a /v1/cluster/info answer.

    The shape assumed, read from Xinference's supervisor (get_cluster_device_info, v4.1; not checked
    against a live GPU cluster here): a list of nodes, `{"node_type": "Supervisor" | "Worker",
    "ip_address", "gpu_count", "gpu_vram_total", "gpu_vram_available"?, ...}`. Workers only carry
    sums over their GPUs: gpu_vram_total is bytes with detailed=true and a "NNNMiB" string without;
    gpu_vram_available (free bytes) comes only with detailed=true. Per-GPU figures are not reported, so
    each worker's sums are split evenly over its gpu_count GPUs (`estimated=True`); a worker without
    gpu_vram_available counts its GPUs as fully free.
    """
    nodes = (body.get("data") or body.get("nodes")) if isinstance(body, dict) else body
    found: list[Gpu] = []
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict) or str(node.get("node_type", "Worker")).lower() != "worker":
            continue
        count = _int(node.get("gpu_count")) or 0
        total = parse_bytes(node.get("gpu_vram_total"))
        if count <= 0 or not total:
            continue
        free = parse_bytes(node.get("gpu_vram_available"))
        free = total if free is None else min(free, total)
        worker = str(node.get("ip_address") or "") or None
        for index in range(count):
            found.append(Gpu(index, "GPU", total // count, free // count, worker=worker, estimated=count > 1))
    return found


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": GiB, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: Any) -> int | None:
    """Bytes from 12345, 1.2e10, "81920MiB", "80 GiB"; None when it is not a size."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value) if value >= 0 else None
    match = _SIZE.match(str(value))
    unit = _UNITS.get(match.group(2).lower()) if match else None
    return int(float(match.group(1)) * unit) if unit else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
