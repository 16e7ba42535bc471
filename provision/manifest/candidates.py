"""A model's fallback chain resolved into fully specified, normalised launch candidates.

A fallback lists only what changes; every other field is inherited from the entry above it (a fallback
with a new `source` does not inherit `local_path`: another model's weights are not in the old folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import engines
from ..catalog.model import size_to_wire

if TYPE_CHECKING:
    from .schema import Manifest


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
    source_from_catalog: str | None = None  # how a source the manifest left out was found ("from the catalog (...)")
    accept_weights_mismatch: bool = False

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


@dataclass(frozen=True)
class DerivedSource:
    """A source the manifest left out, taken from the catalog."""

    source: str
    revision: str | None
    said: str  # "from the catalog (xinference 4.1.0 (installed))"


def derive_source(manifest: Manifest, model_type: str, values: dict) -> DerivedSource | None:
    """The hub id the catalog lists for this name and spec on the manifest's hub (None: none)."""
    catalog = manifest._catalog
    hub = manifest.download.hub
    if catalog is None or hub not in ("modelscope", "huggingface") or values.get("source") or values.get("local_path"):
        return None
    family = catalog.family(model_type, values["name"])
    if family is None:
        return None
    choice = catalog.choose(family, size=values.get("size_in_billions"), format=values.get("format"),
                            quantization=values.get("quantization"), hub=hub)
    if choice.source is None:
        return None
    return DerivedSource(choice.source, choice.revision, f"from the catalog ({catalog.source})")


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
    derived = derive_source(manifest, model_type, values)
    source = derived.source if derived else values["source"]
    revision = values["revision"] or (derived.revision if derived else None)
    if local:
        folder = manifest.resolve_path(local)
    elif source:
        folder = manifest.models_dir / source
    else:
        folder = None
    return Candidate(
        role=role,
        model_type=model_type,
        model_index=model_index,
        position=position,
        uid=values["uid"],
        name=values["name"],
        source=source,
        revision=revision,
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
        downloadable=bool(source) and not local and manifest.download.hub != "none",
        options=dict(values["options"] or {}),
        launch_timeout=values["launch_timeout"] or 900.0,
        virtual_env=manifest.server.virtual_env,
        source_from_catalog=derived.said if derived else None,
        accept_weights_mismatch=bool(values["accept_weights_mismatch"]),
    )
