"""The server's Python, read from package METADATA only (importlib.metadata; torch is never imported):
versions, the torch build against the machine's GPUs, torchvision and vLLM against that torch, and the
engines each model's chain needs.

The local server runs beside our interpreter (runtime/server.find_executable), so this Python's
distributions are the server's; a server given by server.endpoint runs elsewhere and is not judged here.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from dataclasses import dataclass

from ..engines import ENGINE_PACKAGES, is_gpu_only
from ..manifest import Manifest
from .findings import Finding, blocker, ok, warning

VERSIONS = ("provision", "xinference", "xoscar", "torch", "torchvision", "transformers", "sentence-transformers",
            "vllm", "nvidia-ml-py")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_PIN = re.compile(r"^torch\s*\(?\s*==\s*([^\s,;)]+)")


@dataclass(frozen=True)
class Dist:
    name: str
    version: str
    requires: tuple[str, ...]
    has_file: object  # callable(relative path) -> bool, for the files a build ships

    @property
    def local(self) -> str:
        """The local version label: `cpu` of 2.5.1+cpu, `cu121` of 2.5.1+cu121, "" for none."""
        return self.version.partition("+")[2].lower()

    @property
    def base(self) -> str:
        return self.version.partition("+")[0]

    def pinned_torch(self) -> str | None:
        """The torch version this distribution pins (Requires-Dist: torch==X), unconditionally."""
        for requirement in self.requires:
            if ";" in requirement and "extra" in requirement.split(";", 1)[1]:
                continue
            match = _PIN.match(requirement.strip())
            if match:
                return match.group(1)
        return None


def dist(name: str) -> Dist | None:
    """The distribution of that name the server's Python imports first (sys.path order), or None."""
    try:
        found = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    version = found.version or "?"

    def has_file(relative: str) -> bool:
        try:
            return bool(found.locate_file(relative).exists())
        except (OSError, NotImplementedError, AttributeError):
            return False

    return Dist(name, version, tuple(found.requires or ()), has_file)


def torch_build(torch: Dist) -> str:
    """cpu | cuda | rocm | unknown, from the version label, the nvidia-* requirements (PyPI's Linux
    wheels), or the CUDA libraries the wheel ships."""
    local = torch.local
    if local.startswith("cpu"):
        return "cpu"
    if local.startswith("cu"):
        return "cuda"
    if local.startswith("rocm"):
        return "rocm"
    if any(r.lower().startswith("nvidia-") for r in torch.requires):
        return "cuda"
    if torch.has_file("torch/lib/libtorch_cuda.so") or torch.has_file("torch/lib/libc10_cuda.so"):
        return "cuda"
    if torch.has_file("torch/lib/libtorch_cpu.so"):
        return "cpu"
    return "unknown"


def version_findings(local_server: bool) -> list[Finding]:
    """Python and the versions that matter, then what is missing for a local server."""
    versions = {name: (d.version if (d := dist(name)) else None) for name in VERSIONS}
    python = ".".join(map(str, sys.version_info[:3]))
    found = [ok("python", f"Python {python} ({sys.executable})", version=python, executable=sys.executable)]
    if sys.version_info < (3, 10):
        found[0] = blocker("python", f"Python {python} is too old", "provision and Xinference 4 need Python 3.10 or newer",
                           "create the venv with python3.10 or newer")
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    missing = [k for k, v in versions.items() if v is None]
    found.append(ok("packages", shown + (f"; not installed: {', '.join(missing)}" if missing else ""), **versions))
    if local_server:
        for name in ("xinference", "torch"):
            if versions[name] is None:
                found.append(blocker("packages", f"{name} is not installed in {sys.executable}'s environment",
                                     "provision starts xinference-local from this Python, and Xinference needs torch",
                                     "pip install 'provision[server]' (scripts/bootstrap installs the CPU torch first)"))
    return found


def torch_findings(gpu_count: int | None) -> list[Finding]:
    """The torch build against the machine (gpu_count None: not known), and torchvision against torch."""
    torch = dist("torch")
    if torch is None:
        return []
    build = torch_build(torch)
    found: list[Finding] = []
    if gpu_count == 0 and build == "cuda":
        found.append(warning(
            "torch", f"torch {torch.version} is a CUDA build, and this machine has no NVIDIA GPU",
            "it runs on the CPU all the same, but brings gigabytes of CUDA libraries, and engines that see a CUDA "
            "torch try the GPU first",
            f"install the CPU build: pip install 'torch=={torch.base}' --index-url {CPU_INDEX}", build=build))
    elif gpu_count and build == "cpu":
        found.append(warning(
            "torch", f"torch {torch.version} is a CPU build, but this machine has {gpu_count} NVIDIA GPU"
            f"{'s' if gpu_count != 1 else ''}",
            "Transformers and sentence_transformers models then run on the CPU, slowly, and vLLM will not import",
            f"install a CUDA build: pip install 'torch=={torch.base}' (PyPI's Linux wheels are CUDA builds)",
            build=build))
    else:
        found.append(ok("torch", f"torch {torch.version}: {build} build"
                        + (f", {gpu_count} GPU{'s' if gpu_count != 1 else ''}" if gpu_count else ""), build=build))
    vision = dist("torchvision")
    if vision is not None:
        problem = _torchvision_mismatch(torch, vision)
        if problem:
            found.append(blocker(
                "torch", f"torchvision {vision.version} does not match torch {torch.version}: {problem}",
                "importing transformers then fails with `operator torchvision::nms does not exist`, and every "
                "Transformers or sentence_transformers launch with it",
                f"pip uninstall -y torchvision (no engine provision uses needs it), or install the torchvision built "
                f"for this torch from the same index{' (' + CPU_INDEX + ')' if torch.local.startswith('cpu') else ''}"))
    return found


def _torchvision_mismatch(torch: Dist, vision: Dist) -> str | None:
    pinned = vision.pinned_torch()
    if pinned and pinned.partition("+")[0] != torch.base:
        return f"it was built for torch {pinned}"
    vision_build = "cpu" if vision.local.startswith("cpu") else ("cuda" if vision.local.startswith("cu") or
                                                                  not vision.local else vision.local)
    torch_kind = torch_build(torch)
    if torch_kind in ("cpu", "cuda") and vision_build in ("cpu", "cuda") and vision_build != torch_kind:
        where = "PyPI's (a CUDA build)" if not vision.local else f"a {vision_build.upper()} build"
        return f"it is {where}, torch is a {torch_kind.upper()} build"
    return None


def vllm_findings(needed: bool, needed_only: list[str]) -> list[Finding]:
    """vLLM installed, and built for the torch beside it. needed: some candidate uses vllm; needed_only:
    the models whose every candidate does (a broken vLLM blocks those)."""
    vllm, torch = dist("vllm"), dist("torch")
    if vllm is None:
        return []  # engine_findings says what its absence means for the manifest
    pinned = vllm.pinned_torch()
    if pinned and torch is not None and pinned.partition("+")[0] != torch.base:
        what = f"vLLM {vllm.version} was built for torch {pinned}, and this Python has torch {torch.version}"
        why = "vLLM's compiled kernels load only with the torch they were built for: `Failed to import vLLM`"
        fix = (f"pip install 'torch=={pinned}' in the server's venv (or reinstall vllm for torch {torch.base}), or keep "
               "vLLM in a venv of its own")
        if needed_only:
            return [blocker("vllm", what, why + f"; {', '.join(needed_only)} can only run on vLLM", fix)]
        return [warning("vllm", what, why + ("; the vllm candidates fall back" if needed else ""), fix)]
    if torch is None and pinned:
        return [warning("vllm", f"vLLM {vllm.version} is installed without torch", "it cannot import",
                        f"pip install 'torch=={pinned}'")]
    return [ok("vllm", f"vLLM {vllm.version}" + (f" for torch {pinned}" if pinned else ""))]


def chains_needing(manifest: Manifest, engine: str) -> list[str]:
    """The uids of the models whose every candidate runs on `engine`."""
    uids = []
    for index, spec in enumerate(manifest.models):
        candidates = manifest.candidates(index)
        if candidates and all(c.engine.lower() == engine for c in candidates):
            uids.append(spec.uid)
    return uids


def engine_findings(manifest: Manifest, gpu_count: int | None) -> list[Finding]:
    """Which engines the manifest's chains name are missing here, and the models no candidate can run."""
    if manifest.server.endpoint:
        return [ok("engines", f"the server at {manifest.server.endpoint} runs elsewhere: its engines are its own "
                   "(`provision plan` asks it)")]
    if manifest.server.virtual_env:
        return [ok("engines", "server.virtual_env is on: Xinference installs each model's engine in a venv of its own")]
    missing_by_engine: dict[str, list[str]] = {}
    blocked_engines: set[str] = set()
    found: list[Finding] = []
    for index, spec in enumerate(manifest.models):
        reasons, engines, absent_here = [], [], set()
        for c in manifest.candidates(index):
            key = c.engine.lower()
            absent = [p for p in ENGINE_PACKAGES.get(key, ()) if dist(p) is None]
            if absent:
                missing_by_engine.setdefault(c.engine, absent)
                absent_here.update(absent)
                reasons.append(f"{c.label} {c.engine}: {', '.join(absent)} not installed")
            elif is_gpu_only(key) and gpu_count == 0:
                reasons.append(f"{c.label} {c.engine}: needs a GPU, and this machine has none")
            else:
                reasons = []
                break
            engines.append(c.engine)
        if reasons:
            blocked_engines.update(engines)
            install = f"install an engine of its chain into the server's Python (pip install {' '.join(sorted(absent_here))}), or " \
                if absent_here else ""
            found.append(blocker("engines", f"{spec.role} {spec.uid}: no candidate can run here", "; ".join(reasons),
                                 install + "add a fallback with an engine that is installed (Transformers, "
                                 "sentence_transformers)"))
    for engine, absent in missing_by_engine.items():
        if engine not in blocked_engines:
            found.append(warning("engines", f"engine {engine} is not installed ({', '.join(absent)} missing)",
                                 "its candidates fail with `No module named ...` and the chain falls back",
                                 f"pip install {' '.join(absent)} into the server's Python, or drop those candidates"))
    if not found:
        found.append(ok("engines", "every engine the chains name is installed"))
    return found
