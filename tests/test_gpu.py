"""GPU facts: NVML without a driver is "no GPU" (never an error), a fake NVML maps CUDA_VISIBLE_DEVICES
the way Xinference numbers GPUs, and /v1/cluster/info is read in both of its vram formats."""

from __future__ import annotations

import sys
import types

import pytest
import responses

from provision.errors import AuthError
from provision.gpu import GiB, ClusterInfoSource, Gpu, NvmlSource, StaticSource, parse_bytes, parse_cluster_info
from provision.xinference import XinferenceClient

URL = "http://10.0.0.5:9997"
MiB = 1024**2


def real_device_count() -> int:
    """What the real NVML of this machine says, asked directly: 0 without the library, a driver or a card."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def test_nvml_on_this_machine_agrees_with_the_driver():
    # Without an NVIDIA driver (these CI machines) gpus() says "none"; with one (the target machines) it
    # lists every card the driver counts, each with sane numbers. Either way it never raises.
    gpus = NvmlSource().gpus()
    assert len(gpus) == real_device_count()
    assert [g.index for g in gpus] == list(range(len(gpus)))
    assert all(0 <= g.free_bytes <= g.total_bytes and g.total_bytes > 0 and g.name for g in gpus)
    assert len(NvmlSource("0").gpus()) == min(1, len(gpus))  # CUDA_VISIBLE_DEVICES=0: the first card only


def fake_pynvml(monkeypatch, cards: list[tuple[str, int, int]], *, init_error: bool = False):
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def by_uuid(uuid: bytes):
        for i, card in enumerate(cards):
            if card[0].encode() == uuid:
                return i
        raise NVMLError("Not Found")

    module.NVMLError = NVMLError
    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(cards)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetHandleByUUID = by_uuid
    module.nvmlDeviceGetName = lambda h: f"card-{h}".encode()
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=cards[h][1], free=cards[h][2], used=0)
    monkeypatch.setitem(sys.modules, "pynvml", module)


CARDS = [("GPU-aaa", 80 * GiB, 70 * GiB), ("GPU-bbb", 80 * GiB, 6 * GiB), ("GPU-ccc", 24 * GiB, 24 * GiB)]


def test_nvml_reads_every_card(monkeypatch):
    fake_pynvml(monkeypatch, CARDS)
    assert NvmlSource().gpus() == [Gpu(0, "card-0", 80 * GiB, 70 * GiB), Gpu(1, "card-1", 80 * GiB, 6 * GiB),
                                   Gpu(2, "card-2", 24 * GiB, 24 * GiB)]


@pytest.mark.parametrize("visible, expected", [
    ("2,1", [("card-2", 24), ("card-1", 6)]),  # gpu_idx 0 is the first card listed
    ("GPU-bbb", [("card-1", 6)]),
    ("1,7,0", [("card-1", 6)]),  # CUDA stops at the first id that does not exist
    ("-1", []),
    ("", [("card-0", 70), ("card-1", 6), ("card-2", 24)]),
])
def test_nvml_numbers_gpus_as_the_server_sees_them(monkeypatch, visible, expected):
    fake_pynvml(monkeypatch, CARDS)
    gpus = NvmlSource(visible).gpus()
    assert [(g.name, g.free_bytes // GiB) for g in gpus] == expected
    assert [g.index for g in gpus] == list(range(len(expected)))


def test_nvml_init_failure_is_an_empty_list(monkeypatch):
    fake_pynvml(monkeypatch, CARDS, init_error=True)
    assert NvmlSource().gpus() == []


# Xinference's supervisor (get_cluster_device_info): a worker's gpu_vram_total is bytes with
# detailed=true and a "NNNMiB" string without; gpu_vram_available comes with detailed=true only.
DETAILED = [
    {"node_type": "Supervisor", "ip_address": "10.0.0.5:9997", "gpu_count": 0, "gpu_vram_total": 0,
     "gpu_vram_available": 0, "cpu_count": 16},
    {"node_type": "Worker", "ip_address": "10.0.0.6:30001", "gpu_count": 1, "gpu_vram_total": 85899345920.0,
     "gpu_vram_available": 6 * GiB, "gpu_utilization": 0.4},
    {"node_type": "Worker", "ip_address": "10.0.0.7:30001", "gpu_count": 2, "gpu_vram_total": 160 * GiB,
     "gpu_vram_available": 100 * GiB},
    {"node_type": "Worker", "ip_address": "10.0.0.8:30001", "gpu_count": 0, "gpu_vram_total": 0},
]


@responses.activate
def test_cluster_info_with_vram_in_bytes():
    responses.get(f"{URL}/v1/cluster/info?detailed=true", json=DETAILED)
    gpus = ClusterInfoSource(XinferenceClient(URL)).gpus()
    assert gpus == [
        Gpu(0, "GPU", 80 * GiB, 6 * GiB, worker="10.0.0.6:30001"),
        Gpu(0, "GPU", 80 * GiB, 50 * GiB, worker="10.0.0.7:30001", estimated=True),
        Gpu(1, "GPU", 80 * GiB, 50 * GiB, worker="10.0.0.7:30001", estimated=True),
    ]
    assert gpus[0].label == "GPU 0 of 10.0.0.6:30001"


def test_cluster_info_with_vram_as_a_mib_string():
    body = [{"node_type": "Worker", "ip_address": "10.0.0.6:30001", "gpu_count": 1, "gpu_vram_total": "81920MiB"}]
    # no gpu_vram_available (an answer without detailed=true): counted as free, so nothing is skipped for it
    assert parse_cluster_info(body) == [Gpu(0, "GPU", 81920 * MiB, 81920 * MiB, worker="10.0.0.6:30001")]


@pytest.mark.parametrize("body", [None, {}, "text", [1, "x"], {"data": [{"node_type": "Worker", "gpu_count": "x"}]}])
def test_cluster_info_that_is_not_understood_is_no_gpu(body):
    assert parse_cluster_info(body) == []


@responses.activate
def test_cluster_info_refused_raises_so_the_caller_can_say_unknown():
    responses.get(f"{URL}/v1/cluster/info?detailed=true", status=403, json={"detail": "needs admin"})
    with pytest.raises(AuthError):
        ClusterInfoSource(XinferenceClient(URL)).gpus()


@pytest.mark.parametrize("value, expected", [
    (1234, 1234), (1.5e3, 1500), ("81920MiB", 81920 * MiB), ("80 GiB", 80 * GiB), ("2GB", 2 * 1000**3),
    ("512", 512), ("-1", None), (-5, None), ("lots", None), (None, None), (True, None),
])
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


def test_static_source_returns_a_copy():
    cards = [Gpu(0, "x", 1, 1)]
    source = StaticSource(cards)
    source.gpus().clear()
    assert source.gpus() == cards


def test_nvml_lists_the_processes_holding_each_card(monkeypatch):
    fake_pynvml(monkeypatch, CARDS)
    module = sys.modules["pynvml"]
    held = {0: [types.SimpleNamespace(pid=4321, usedGpuMemory=10 * GiB), types.SimpleNamespace(pid=99, usedGpuMemory=None)],
            1: [types.SimpleNamespace(pid=4321, usedGpuMemory=2 * GiB)]}
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: held.get(h, [])
    module.nvmlDeviceGetGraphicsRunningProcesses = lambda h: (_ for _ in ()).throw(module.NVMLError("Not Supported"))
    from provision.gpu import GpuProcess

    assert NvmlSource().processes() == {0: [GpuProcess(4321, 10 * GiB), GpuProcess(99, None)],
                                        1: [GpuProcess(4321, 2 * GiB)], 2: []}
    assert NvmlSource("1").processes() == {0: [GpuProcess(4321, 2 * GiB)]}  # numbered as the server sees them
    fake_pynvml(monkeypatch, CARDS, init_error=True)
    assert NvmlSource().processes() == {}
