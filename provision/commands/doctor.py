"""`provision doctor [MANIFEST]`: why `up` would fail here, before it does, and what to do.

Each check (diagnose/) gives findings with what / why / fix and a severity; doctor exits 1 when one of
them blocks `up`. Without a manifest it checks this machine and the state (and the manifest the state
names, when it is there). It changes nothing: no download, no launch, one small request to the hub.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

from ..diagnose import BLOCKER, OK, WARNING, Finding
from ..diagnose import history, machine, packages, reach
from ..errors import EXIT_FAILED, EXIT_OK, ManifestError, ProvisionError
from ..gpu import NvmlSource
from ..manifest import Manifest, load
from ..state import State, StateDir


@dataclass
class DoctorResult:
    manifest: str | None
    state_dir: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == BLOCKER]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.blockers else EXIT_OK


def doctor(manifest_path: str | None, state_dir: StateDir | str | os.PathLike | None, *,
           disk_usage: machine.DiskUsage = shutil.disk_usage, nvml: NvmlSource | None = None,
           hub_deadline: float = reach.HUB_DEADLINE_S, environ: dict | None = None) -> DoctorResult:
    """Every check, in order: packages, torch and vLLM, engines, GPUs, ports, hub, disk, auth, logs, attempts.

    disk_usage (shutil.disk_usage) and nvml (NvmlSource) can be replaced, for tests."""
    state_dir = state_dir if isinstance(state_dir, StateDir) else StateDir(state_dir)
    result = DoctorResult(manifest_path, str(state_dir.path))
    add = result.findings.extend

    state = _guarded(result, "state", lambda: state_dir.read())
    manifest = _manifest(result, manifest_path, state)
    if manifest is not None and result.manifest is None:
        result.manifest = manifest.file
    spec = manifest.server if manifest is not None else None
    local_server = spec is None or not spec.endpoint
    visible = (spec.env.get("CUDA_VISIBLE_DEVICES") if spec else None) or os.environ.get("CUDA_VISIBLE_DEVICES")
    nvml = nvml or NvmlSource(visible)
    record = state.server if state is not None else None

    add(_guarded(result, "packages", lambda: packages.version_findings(local_server)) or [])
    gpus = _guarded(result, "gpu", lambda: machine.gpu_findings(nvml, machine.our_pids(record)))
    gpu_count = gpus[1] if gpus else None
    if local_server:
        add(_guarded(result, "torch", lambda: packages.torch_findings(gpu_count)) or [])
        uses_vllm = manifest is not None and any(c.engine.lower() == "vllm" for i in range(len(manifest.models))
                                                 for c in manifest.candidates(i))
        only_vllm = packages.chains_needing(manifest, "vllm") if manifest is not None else []
        add(_guarded(result, "vllm", lambda: packages.vllm_findings(uses_vllm, only_vllm)) or [])
    if manifest is not None:
        add(_guarded(result, "engines", lambda: packages.engine_findings(manifest, gpu_count)) or [])
    add(gpus[0] if gpus else [])
    if manifest is not None:
        add(_guarded(result, "port", lambda: machine.port_findings(manifest, record)) or [])
        hub = _guarded(result, "hub", lambda: reach.hub_findings(manifest, deadline=hub_deadline, environ=environ))
        add(hub[0] if hub else [])
        need, note = _guarded(result, "disk", lambda: _download_need(manifest, state, state_dir, bool(hub and hub[1]))) \
            or (None, "not known")
        add(_guarded(result, "disk", lambda: machine.disk_findings(manifest, need, note, disk_usage)) or [])
    add(_guarded(result, "auth", lambda: reach.auth_findings(manifest, state_dir, reach.server_record(manifest, record)))
        or [])
    add(_guarded(result, "log", lambda: history.log_findings(state_dir, state,
                                                             virtual_env=spec.virtual_env if spec else None)) or [])
    add(_guarded(result, "attempts", lambda: history.attempt_findings(state)) or [])
    return result


def _guarded(result: DoctorResult, check: str, run: Callable):
    """Run one check; a check that cannot run is a warning of its own, never the end of doctor."""
    try:
        return run()
    except ProvisionError as exc:
        result.findings.append(Finding(check, WARNING, f"the {check} check could not run: {exc.message}",
                                       fix=exc.hint or ""))
    except Exception as exc:  # noqa: BLE001 - doctor reports what it could not check and goes on
        result.findings.append(Finding(check, WARNING, f"the {check} check failed: {type(exc).__name__}: {exc}"[:300],
                                       fix="a bug in provision doctor: please report it"))
    return None


def _manifest(result: DoctorResult, path: str | None, state: State | None) -> Manifest | None:
    """The manifest given, else the one the state was brought up from (when it is still there)."""
    if path is None and state is not None and state.manifest and os.path.isfile(state.manifest):
        path = state.manifest
        result.findings.append(Finding("manifest", OK, f"manifest {path} (from the state)"))
    if path is None:
        result.findings.append(Finding("manifest", OK, "no manifest given: the machine and the state are checked"))
        return None
    try:
        manifest = load(path)
    except ManifestError as exc:
        result.findings.append(Finding("manifest", BLOCKER, f"{path}: {len(exc.problems)} problem"
                                       f"{'s' if len(exc.problems) != 1 else ''} in the manifest",
                                       "; ".join(p.render(path) for p in exc.problems[:5]),
                                       "`provision validate` lists every problem"))
        return None
    if manifest.file != path:
        manifest._file = path
    return manifest


def _download_need(manifest: Manifest, state: State | None, state_dir: StateDir,
                   listed: bool) -> tuple[int | None, str]:
    """What the plan still downloads (first candidates, each folder once), as `up` would plan it."""
    from ..observe import observe
    from ..plan import make_plan
    from ..plan.weights import download_need

    need, unknown = download_need(make_plan(manifest, observe(manifest, state, state_dir, hub_listing=listed)))
    if unknown and not need:
        return None, f"size unknown ({', '.join(unknown)}: the hub did not list {'them' if len(unknown) > 1 else 'it'})"
    return need, ""
