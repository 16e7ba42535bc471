"""A model's fallback chain resolved into fully specified, normalised launch candidates.

A fallback lists only what changes; every other field is inherited from the entry above it (a fallback
with a new `source` does not inherit `local_path`: another model's weights are not in the old folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import engines

if TYPE_CHECKING:
    from .schema import Manifest


def size_to_wire(size: float | int | str | None) -> int | str | None:
    """Xinference size ids: integers stay integers, 0.5 becomes "0_5"."""
    if size is None:
        return None
    if isinstance(size, str):
        size = float(size.replace("_", "."))
    if float(size).is_integer():
        return int(size)
    return format(float(size), "g").replace(".", "_")


@dataclass(frozen=True)
class Candidate:
    """One fully specified, normalised launch candidate of a model's fallback chain."""

    role: str
    model_type: str
    model_index: int
    position: int  # 0 = primary, 1.. = fallbacks[position - 1]
    uid: str
    name: str
    source: str | None
    revision: str | None
    engine: str
    gpu_memory_utilization: float | str | None  # a share in (0, 1], "auto" (the plan resolves it), None
    size_in_billions: int | str | None
    format: str | None
    quantization: str | None
    n_gpu: int | str | None
    gpu_idx: int | list[int] | None
    worker_ip: str | None
    replica: int
    folder: Path | None  # where the weights are (or will be) on disk
    downloadable: bool
    options: dict[str, Any] = field(default_factory=dict)
    launch_timeout: float = 900.0
    virtual_env: bool = False

    @property
    def label(self) -> str:
        return "primary" if self.position == 0 else f"fallback {self.position}"

    @property
    def field_path(self) -> str:
        """Where the candidate is written in the manifest: models[1] or models[1].fallbacks[0]."""
        base = f"models[{self.model_index}]"
        return base if self.position == 0 else f"{base}.fallbacks[{self.position - 1}]"

    @property
    def is_vllm(self) -> bool:
        return engines.is_vllm(self.engine)

    @property
    def on_gpu(self) -> bool:
        return self.n_gpu is not None

    def gpu_share(self) -> tuple[float, bool]:
        """(gpu_memory_utilization sent to vLLM, True when it is provision's default for the role)."""
        return engines.gpu_memory_utilization(self.model_type, self.gpu_memory_utilization)

    def describe(self) -> str:
        size = f" {self.size_in_billions}B" if self.size_in_billions is not None else ""
        return f"{self.name}{size} on {self.engine}"


def resolve_chain(manifest: Manifest, index: int) -> list[Candidate]:
    """The chain of models[index], primary first, each fallback filled in from the entry above it."""
    spec = manifest.models[index]
    current = {f: getattr(spec, f) for f in type(spec).model_fields if f not in ("role", "fallbacks")}
    explicit = set(spec.model_fields_set)
    chain = [_candidate(manifest, spec.role, index, 0, current, explicit)]
    for position, fallback in enumerate(spec.fallbacks, start=1):
        given = fallback.model_dump(exclude_unset=True)
        if "source" in given and "local_path" not in given:
            given["local_path"] = None  # another model's weights are not in the old folder
        current = {**current, **given}
        explicit |= fallback.model_fields_set
        chain.append(_candidate(manifest, spec.role, index, position, current, explicit))
    return chain


def _candidate(manifest: Manifest, role: str, model_index: int, position: int, values: dict,
               explicit: set[str]) -> Candidate:
    model_type = engines.MODEL_TYPE_OF_ROLE[role]
    engine = values["engine"] or engines.DEFAULT_ENGINE.get(model_type, "")
    engine = engines.canonical_engine(model_type, engine) or engine
    n_gpu = values["n_gpu"]
    if "n_gpu" not in explicit and engines.is_gpu_only(engine):
        n_gpu = "auto"
    local = values["local_path"]
    if local:
        folder = manifest.resolve_path(local)
    elif values["source"]:
        folder = manifest.models_dir / values["source"]
    else:
        folder = None
    return Candidate(
        role=role,
        model_type=model_type,
        model_index=model_index,
        position=position,
        uid=values["uid"],
        name=values["name"],
        source=values["source"],
        revision=values["revision"],
        engine=engine,
        gpu_memory_utilization=values["gpu_memory_utilization"],
        size_in_billions=size_to_wire(values["size_in_billions"]),
        format=values["format"],
        quantization=values["quantization"],
        n_gpu=n_gpu,
        gpu_idx=values["gpu_idx"],
        worker_ip=values["worker_ip"],
        replica=values["replica"] or 1,
        folder=folder,
        downloadable=bool(values["source"]) and not local and manifest.download.hub != "none",
        options=dict(values["options"] or {}),
        launch_timeout=values["launch_timeout"] or 900.0,
        virtual_env=manifest.server.virtual_env,
    )
