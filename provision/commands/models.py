"""`provision models`: search Xinference's catalog, or show one family in full with a manifest entry for it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import Family, sources
from ..catalog.memory import kv_cache
from ..catalog.model import ROLE_OF_TYPE

HUBS = ("modelscope", "huggingface")


@dataclass
class ModelsResult:
    catalog: str
    query: str | None
    role: str | None
    found: list[dict] = field(default_factory=list)  # summary() of each family that matched
    detail: dict | None = None  # detail() of the one family the query named exactly
    exit_code: int = 0


def models(query: str | None, role: str | None) -> ModelsResult:
    catalog = sources.local()
    exact = [f for f in catalog.families if query and f.name == query and (role is None or f.role == role)]
    if len(exact) == 1:
        return ModelsResult(catalog.source, query, role, [summary(exact[0])], detail(exact[0]))
    found = [summary(f) for f in catalog.search(query, role)]
    return ModelsResult(catalog.source, query, role, found, exit_code=0 if found or not query else 1)


def summary(family: Family) -> dict:
    """One family on one line's worth of facts (the --json document has them all)."""
    ids = {hub: list(dict.fromkeys(i for i, _ in family.hub_ids(hub)))[:6] for hub in HUBS}
    quants = sorted({q for s in family.specs for q in s.quantizations()})
    return {
        "name": family.name, "role": ROLE_OF_TYPE[family.model_type], "model_type": family.model_type,
        "sizes": [str(s).replace("_", ".") for s in family.sizes()], "formats": family.formats(),
        "quantizations": quants, "dimensions": family.dimensions, "max_tokens": family.max_tokens,
        "context_length": family.context_length, "abilities": list(family.abilities),
        "modelscope_ids": ids["modelscope"], "huggingface_ids": ids["huggingface"],
    }


def detail(family: Family) -> dict:
    specs = []
    for spec in family.specs:
        kv = kv_cache(spec)
        specs.append({
            "format": spec.format, "size_in_billions": str(spec.size).replace("_", ".") if spec.size is not None else None,
            "quantizations": spec.quantizations(),
            "sources": {hub: {"model_id": src.model_id, "revision": src.revision} for hub, src in spec.sources.items()},
            "kv_cache_bytes_per_token": kv.bytes_per_token if kv else None,
        })
    return {**summary(family), "description": family.description, "languages": list(family.languages),
            "architectures": list(family.architectures), "specs": specs, "manifest_entry": manifest_entry(family)}


def manifest_entry(family: Family, hub: str = "modelscope") -> str:
    """A models[] entry for the family's first plain spec on `hub`, ready to paste under `models:`."""
    role = ROLE_OF_TYPE[family.model_type]
    # the plain weights on that hub, smallest first: the entry people start from
    ranked = sorted(family.specs, key=lambda s: (hub not in s.sources, s.format != "pytorch", s.size_billions or 0))
    spec = ranked[0] if ranked else None
    uid = family.name.lower().replace(".", "-")
    lines = [f"  - role: {role}", f"    uid: {uid}", f"    name: {family.name}"]
    if spec is not None:
        if spec.size is not None:
            lines.append(f"    size_in_billions: {str(spec.size).replace('_', '.')}")
        lines.append(f"    format: {spec.format}")
        src = spec.sources.get(hub)
        quantization = src.quantizations[0] if src and src.quantizations else None
        if quantization and quantization != "none":
            lines.append(f"    quantization: {quantization}")
        if src and not src.file_template:  # a GGUF repo holds every quantization: the user picks the file's repo
            lines.append(f"    source: {src.model_id_for(quantization) or src.model_id}")
    if family.model_type == "LLM":
        lines += ["    engine: vLLM", "    gpu_memory_utilization: auto", "    options: {max_model_len: 8192}",
                  "    fallbacks:", "      - engine: Transformers"]
    else:
        lines.append("    engine: sentence_transformers")
    return "\n".join(lines) + "\n"
