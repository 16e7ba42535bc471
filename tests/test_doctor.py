"""`provision doctor` on hand-made situations: a log with every signature, a busy port, a CUDA torch on a CPU
machine (fake dist-info METADATA on sys.path, nothing installed), a full disk (fed numbers), the hub on a
loopback mirror, and recorded attempts."""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest
from download_support import EMBED, WEIGHTS
from support import free_port
from test_classify import LOG_LINES, PREFIX

from provision import render
from provision.commands.doctor import doctor
from provision.diagnose import packages
from provision.launch.classify import SIGNATURES
from provision.state import AttemptRecord, ModelRecord, ServerRecord, State, StateDir

Usage = namedtuple("Usage", "total used free")
GiB = 1024**3


def no_gpu(monkeypatch):
    """NVML that sees no card (the driver is not loaded)."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        raise NVMLError("Driver Not Loaded")

    module.NVMLError, module.nvmlInit, module.nvmlShutdown = NVMLError, init, lambda: None
    monkeypatch.setitem(sys.modules, "pynvml", module)


@pytest.fixture(autouse=True)
def _machine(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def write_manifest(tmp_path: Path, *, port: int | None = None, endpoint: str = "", hub: str = "none",
                   extra_server: str = "") -> Path:
    download = f"  hub: {hub}\n" + (f"  endpoint: {endpoint}\n" if endpoint else "")
    if hub == "none":
        (tmp_path / "weights").mkdir(exist_ok=True)
        model = "    local_path: weights\n"
    else:
        model = f"    source: {EMBED}\n"
    text = (f"version: 1\nname: doc\nserver:\n  port: {port or free_port()}\n  home: {tmp_path / 'home'}\n{extra_server}"
            f"download:\n{download}  models_dir: {tmp_path / 'models'}\n"
            "models:\n  - role: embedding\n    uid: emb\n    name: bge-small-en-v1.5\n"
            f"    engine: sentence_transformers\n{model}roles:\n  embedding: 1\n  chat: 0\n  rerank: 0\n")
    path = tmp_path / "stack.yml"
    path.write_text(text)
    return path


def by_check(result, check: str) -> list:
    return [f for f in result.findings if f.check == check]


def plenty(path: str) -> Usage:
    return Usage(1000 * GiB, 0, 1000 * GiB)


# -- logs and attempts --------------------------------------------------------------------------------


def test_a_log_with_every_signature(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    lines = ["2026-01-01 INFO xinference started"]
    for line, _ in LOG_LINES:
        lines += [PREFIX + line, "INFO something else"]
    lines += [PREFIX + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB"]  # twice
    (state.logs / "server.log").write_text("\n".join(lines) + "\n")
    result = doctor(None, state)
    found = {f.facts["signature"]: f for f in by_check(result, "log")}
    expected = {sig.name for sig in SIGNATURES for line, _ in LOG_LINES if sig.pattern.search(line)} - {"server not answering"}
    assert set(found) >= {"model not found", "model not running", "engine cannot run the model",
                          "GPU memory held by others", "no memory for the KV cache", "CUDA out of memory",
                          "xoscar missing in a virtualenv", "vLLM cannot be imported", "torch and torchvision do not match"}
    assert set(found) <= expected
    oom = found["CUDA out of memory"]
    assert oom.severity == "warning" and oom.facts["lines"] == [12, 28] and "2 times, lines 12, 28" in oom.what
    assert oom.why.startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB")
    assert "enforce_eager" in oom.fix
    assert "virtual_env: false" in found["xoscar missing in a virtualenv"].fix
    assert found["model not found"].facts["lines"] == [2]
    assert result.exit_code == 0  # the past is a warning: it does not block the next `up`


def test_xoscar_remedy_notes_a_manifest_that_already_turned_venvs_off(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    (state.logs / "server.log").write_text("ModuleNotFoundError: No module named 'xoscar'\n")
    result = doctor(str(write_manifest(tmp_path)), state, disk_usage=plenty)
    (finding,) = by_check(result, "log")
    assert "already says server.virtual_env: false" in finding.fix


def test_recorded_attempts_explain_a_model_that_did_not_come_up(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.write(State(manifest="m.yml", name="doc", models=[
        ModelRecord("chat", "c1", "LLM", "failed", error="c1 could not be launched", attempts=[
            AttemptRecord("primary", "qwen2.5-instruct", "vLLM", "failed",
                          "Free memory on device (13.2/23.6 GiB) on startup is less than desired GPU memory utilization",
                          "oom"),
            AttemptRecord("fallback 1", "qwen2.5-instruct", "Transformers", "failed",
                          "Failed to import module 'transformers'", "engine_missing")]),
        ModelRecord("rerank", "r1", "rerank", "running", candidate="fallback 1", engine="sentence_transformers",
                    attempts=[AttemptRecord("primary", "bge-reranker-base", "vllm", "failed",
                                            "No module named 'vllm'", "engine_missing"),
                              AttemptRecord("fallback 1", "bge-reranker-base", "sentence_transformers", "ready")]),
    ]))
    found = {f.facts["uid"]: f for f in by_check(doctor(None, state), "attempts")}
    assert found["c1"].severity == "warning" and "2 failed attempts" in found["c1"].what
    assert "primary qwen2.5-instruct on vLLM: out of memory" in found["c1"].why
    assert "gpu_memory_utilization" in found["c1"].fix  # the most specific failure's remedy
    assert found["r1"].severity == "ok" and "before it: primary vllm: engine not installed" in found["r1"].what


# -- the port -----------------------------------------------------------------------------------------


def test_a_busy_port_names_the_process_holding_it(tmp_path: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = doctor(str(write_manifest(tmp_path, port=port)), tmp_path / "state", disk_usage=plenty)
    (finding,) = by_check(result, "port")
    assert finding.severity == "blocker" and result.exit_code == 1
    assert f"pid {os.getpid()} " in finding.what and finding.facts["holders"][0]["pid"] == os.getpid()
    assert "server.port" in finding.fix
    text, data = render.doctor(result)
    assert text.splitlines()[1].startswith("  [BLOCKER] port:")  # blockers first
    assert data["blockers"] == 1 and data["_errors"][0]["message"].startswith("port:")


def test_a_free_port_is_fine(tmp_path: Path):
    result = doctor(str(write_manifest(tmp_path)), tmp_path / "state", disk_usage=plenty)
    assert [f.severity for f in by_check(result, "port")] == ["ok"]
    assert result.exit_code == 0, render.doctor(result)[0]


# -- torch, torchvision and vLLM from METADATA ------------------------------------------------------


def fake_dist(root: Path, name: str, version: str, requires: list[str] = ()) -> None:
    folder = root / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")


def test_a_cuda_torch_on_a_cpu_machine(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.5.1", ["filelock", "nvidia-cuda-runtime-cu12==12.4.127; platform_system == \"Linux\""])
    monkeypatch.syspath_prepend(str(site))
    result = doctor(None, tmp_path / "state")
    (finding,) = by_check(result, "torch")
    assert finding.severity == "warning" and "CUDA build" in finding.what and "no NVIDIA GPU" in finding.what
    assert "--index-url https://download.pytorch.org/whl/cpu" in finding.fix and "torch==2.5.1" in finding.fix
    assert by_check(result, "packages")[0].facts["torch"] == "2.5.1"


def test_a_pypi_torchvision_next_to_a_cpu_torch_blocks(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.5.1+cpu")
    fake_dist(site, "torchvision", "0.20.1", ["numpy", "torch==2.5.1", "pillow!=8.3.*,>=5.3.0"])
    monkeypatch.syspath_prepend(str(site))
    result = doctor(None, tmp_path / "state")
    findings = by_check(result, "torch")
    assert [f.severity for f in findings] == ["ok", "blocker"] and result.exit_code == 1
    assert "torchvision::nms does not exist" in findings[1].why and "pip uninstall -y torchvision" in findings[1].fix


def test_a_torchvision_built_for_another_torch_blocks(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.6.0+cpu")
    fake_dist(site, "torchvision", "0.20.1+cpu", ["torch==2.5.1"])
    monkeypatch.syspath_prepend(str(site))
    assert "built for torch 2.5.1" in by_check(doctor(None, tmp_path / "state"), "torch")[1].what


def test_a_matching_torchvision_is_fine(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.5.1+cpu")
    fake_dist(site, "torchvision", "0.20.1+cpu", ["torch==2.5.1"])
    monkeypatch.syspath_prepend(str(site))
    assert [f.severity for f in by_check(doctor(None, tmp_path / "state"), "torch")] == ["ok"]


@pytest.mark.parametrize("only_vllm, severity", [(False, "warning"), (True, "blocker")])
def test_vllm_built_for_another_torch(tmp_path: Path, monkeypatch, only_vllm, severity):
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.5.1+cpu")
    fake_dist(site, "vllm", "0.8.5", ["torch==2.6.0", "xformers==0.0.29; platform_system == \"Linux\""])
    monkeypatch.syspath_prepend(str(site))
    manifest = write_manifest(tmp_path)
    chain = "    engine: vllm\n" if only_vllm else "    engine: vllm\n    fallbacks:\n      - engine: sentence_transformers\n"
    manifest.write_text(manifest.read_text().replace("    engine: sentence_transformers\n", chain))
    result = doctor(str(manifest), tmp_path / "state", disk_usage=plenty)
    (finding,) = by_check(result, "vllm")
    assert finding.severity == severity and "built for torch 2.6.0" in finding.what
    assert packages.dist("vllm").pinned_torch() == "2.6.0"


def test_engines_that_are_not_installed(tmp_path: Path, monkeypatch):
    manifest = write_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("    engine: sentence_transformers\n",
                                                     "    engine: llama.cpp\n"))
    result = doctor(str(manifest), tmp_path / "state", disk_usage=plenty)
    (finding,) = by_check(result, "engines")
    assert finding.severity == "blocker" and "xllamacpp not installed" in finding.why


# -- disk and hub -------------------------------------------------------------------------------------


@pytest.mark.parametrize("free, severity", [(1 << 20, "blocker"), (3 * GiB, "warning"), (500 * GiB, "ok")])
def test_disk_against_what_the_plan_downloads(tmp_path: Path, mirror, free, severity):
    manifest = write_manifest(tmp_path, hub="modelscope", endpoint=mirror.url)
    asked = []

    def usage(path: str) -> Usage:
        asked.append(path)
        return Usage(1000 * GiB, 0, free)

    result = doctor(str(manifest), tmp_path / "state", disk_usage=usage)
    (finding,) = by_check(result, "disk")  # models_dir and server.home are on one disk here: one finding
    assert finding.severity == severity, render.doctor(result)[0]
    assert finding.facts["fetch_bytes"] >= len(WEIGHTS)  # the mirror listed the weights: the plan knows the size
    assert finding.facts["fields"] == ["download.models_dir", "server.home"] and asked
    assert (result.exit_code == 1) == (severity == "blocker")


def test_the_hub_is_reached_and_timed(tmp_path: Path, mirror):
    result = doctor(str(write_manifest(tmp_path, hub="modelscope", endpoint=mirror.url)), tmp_path / "state",
                    disk_usage=plenty)
    (finding,) = by_check(result, "hub")
    assert finding.severity == "ok" and f"listed {EMBED} in " in finding.what and finding.facts["seconds"] >= 0
    assert any("/repo/files?" in r.path for r in mirror.request_log)


def test_an_unreachable_hub_blocks_a_download(tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}"
    result = doctor(str(write_manifest(tmp_path, hub="modelscope", endpoint=closed)), tmp_path / "state",
                    disk_usage=plenty, hub_deadline=3)
    (finding,) = by_check(result, "hub")
    assert finding.severity == "blocker" and "cannot reach" in finding.what and "emb still has" in finding.why
    disk = by_check(result, "disk")[0]
    assert "size unknown" in disk.what and disk.severity == "ok"


def test_a_hub_without_the_model(tmp_path: Path, mirror):
    manifest = write_manifest(tmp_path, hub="modelscope", endpoint=mirror.url)
    manifest.write_text(manifest.read_text().replace(EMBED, "acme/no-such-model"))
    (finding,) = by_check(doctor(str(manifest), tmp_path / "state", disk_usage=plenty), "hub")
    assert finding.severity == "blocker"


# -- auth and the result --------------------------------------------------------------------------------


def test_a_recorded_server_that_holds_no_credentials(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.write(State(manifest="m.yml", name="doc", server=ServerRecord(
        url="http://127.0.0.1:9", managed=True, host="127.0.0.1", port=9, home=str(tmp_path / "home"), auth=True)))
    (finding,) = by_check(doctor(None, state), "auth")
    assert finding.severity == "blocker" and "holds no login" in finding.what


def test_a_stopped_server_is_not_asked(tmp_path: Path):
    from provision.auth.credentials import Credentials, save_credentials

    state = StateDir(tmp_path / "state")
    home = str(tmp_path / "home")
    state.write(State(manifest="m.yml", name="doc", server=ServerRecord(
        url="http://127.0.0.1:9", managed=True, host="127.0.0.1", port=9, pid=2**22 + 7, cmdline=["x"], home=home,
        auth=True)))
    save_credentials(state, Credentials("admin", "pw", "xf-key", home=home))
    (finding,) = by_check(doctor(None, state), "auth")
    assert finding.severity == "ok" and "not running" in finding.what


def test_a_damaged_manifest_blocks_and_the_rest_is_still_checked(tmp_path: Path):
    path = tmp_path / "bad.yml"
    path.write_text("version: 1\nname: x\nmodels: []\n")
    result = doctor(str(path), tmp_path / "state")
    assert by_check(result, "manifest")[0].severity == "blocker"
    assert by_check(result, "packages") and result.exit_code == 1
    text, data = render.doctor(result)
    assert "[BLOCKER] manifest:" in text and {f["check"] for f in data["findings"]} >= {"manifest", "python"}


def one_gpu(monkeypatch, holders: list) -> None:
    module = types.ModuleType("pynvml")
    module.NVMLError = type("NVMLError", (Exception,), {})
    module.nvmlInit = module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=140 * GiB, free=120 * GiB, used=20 * GiB)
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: holders
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_gpu_memory_held_by_another_process_and_a_cpu_torch(tmp_path: Path, monkeypatch):
    one_gpu(monkeypatch, [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=20 * GiB)])
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.5.1+cpu")
    monkeypatch.syspath_prepend(str(site))
    result = doctor(None, tmp_path / "state")
    (gpu,) = by_check(result, "gpu")
    assert gpu.severity == "warning" and "GPU 0 NVIDIA H200: 120.0 GiB free of 140.0 GiB" in gpu.what
    assert f"pid {os.getpid()} " in gpu.what and gpu.facts["processes"][0]["used_bytes"] == 20 * GiB
    assert "gpu_memory_utilization" in gpu.fix
    (torch,) = by_check(result, "torch")
    assert torch.severity == "warning" and "CPU build" in torch.what and "1 NVIDIA GPU" in torch.what


def test_the_recorded_log_is_scanned_once(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = StateDir(".provision")  # relative, as by default; the record holds the absolute path
    state.ensure()
    log = state.logs / "server.log"
    log.write_text("CUDA out of memory\n")
    state.write(State(manifest="m.yml", name="doc", server=ServerRecord(url="http://127.0.0.1:9", managed=True,
                                                                       log=str(log.resolve()))))
    assert [f.facts["signature"] for f in by_check(doctor(None, state), "log")] == ["CUDA out of memory"]


def test_a_long_log_keeps_its_line_numbers(tmp_path: Path):
    from provision.diagnose.history import read_log

    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(1, 2001)))
    text, first = read_log(path, limit=100)
    assert text.splitlines()[0] == f"line {first}" and text.splitlines()[-1] == "line 2000"


# -- the command line ---------------------------------------------------------------------------------


def test_the_command_exits_1_on_a_blocker_and_0_otherwise(invoke, tmp_path: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = invoke(["--state-dir", tmp_path / "state", "doctor", write_manifest(tmp_path, port=holder.getsockname()[1]),
                       "--json"])
    assert busy.exit_code == 1, busy.output
    doc = json.loads(busy.stdout)
    assert doc["command"] == "doctor" and doc["status"] == "error" and doc["blockers"] >= 1
    assert any(e["type"] == "Blocker" and e["message"].startswith("port:") for e in doc["errors"])
    assert {f["severity"] for f in doc["findings"]} <= {"ok", "warning", "blocker"}

    fine = invoke(["--state-dir", tmp_path / "state", "doctor", write_manifest(tmp_path)])
    assert fine.exit_code == 0, fine.output
    lines = fine.stdout.splitlines()
    assert lines[0].startswith("provision doctor: 0 blockers") and lines[-1] == "Nothing here blocks `provision up`."
    assert any(line.startswith("  [ok] port:") for line in lines)


def test_the_command_without_a_manifest_checks_the_machine(invoke, tmp_path: Path):
    result = invoke(["--state-dir", tmp_path / "state", "doctor", "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == (1 if doc["blockers"] else 0) and doc["manifest"] is None
    assert {"manifest", "python", "gpu"} <= {f["check"] for f in doc["findings"]}
    missing = invoke(["--state-dir", tmp_path / "state", "doctor", tmp_path / "nope.yml"])
    assert missing.exit_code == 1 and "[BLOCKER] manifest:" in missing.stdout
