"""Xinference's built-in models as provision reads them: a family (name, type, abilities, limits) with its
specs (format, size) and, per hub, the model id, revision, quantizations and the config metadata.

Built from the JSON files under `xinference/model/*/models/` (specs nest their hubs in `model_src`), from
a server's `GET /v1/model_registrations/{type}?detailed=true` (one spec dict per hub, `model_hub`), or from
the snapshot provision ships (`to_json` of the families).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

MODEL_TYPES = ("LLM", "embedding", "rerank")
ROLE_OF_TYPE = {"LLM": "chat", "embedding": "embedding", "rerank": "rerank"}
# what provision keeps of a hub's model_metadata: enough for the KV cache and the weights check
METADATA_KEYS = ("vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
                 "num_hidden_layers", "intermediate_size", "architecture_type", "weights_bytes",
                 "full_attention_interval")


@dataclass(frozen=True)
class HubSource:
    model_id: str  # may hold `{quantization}`: one repo per quantization (model_id_for fills it in)
    revision: str | None = None
    quantizations: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    file_template: str | None = None  # one file per quantization in one repo (GGUF): the repo holds them all

    def model_id_for(self, quantization: str | None) -> str | None:
        """The repo of that quantization; None when the id needs one and none is given."""
        if "{quantization}" not in self.model_id:
            return self.model_id
        return self.model_id.replace("{quantization}", quantization) if quantization else None


@dataclass(frozen=True)
class Spec:
    format: str
    size: int | str | None  # Xinference's id: 4, "0_5"; None for embedding/rerank
    sources: dict[str, HubSource] = field(default_factory=dict, hash=False, compare=False)
    activated_size: float | None = None

    @property
    def size_billions(self) -> float | None:
        if self.size is None:
            return None
        try:
            return float(str(self.size).replace("_", "."))
        except ValueError:
            return None

    def quantizations(self, hub: str | None = None) -> list[str]:
        hubs = [hub] if hub else list(self.sources)
        found: list[str] = []
        for name in hubs:
            for quant in self.sources.get(name, HubSource("")).quantizations:
                if quant not in found:
                    found.append(quant)
        return found

    def describe(self) -> str:
        size = f" {self.size}B" if self.size is not None else ""
        return f"{self.format}{size}".replace("_", ".")


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # LLM | embedding | rerank
    specs: tuple[Spec, ...] = ()
    abilities: tuple[str, ...] = ()
    context_length: int | None = None
    dimensions: int | None = None
    max_tokens: int | None = None
    architectures: tuple[str, ...] = ()
    arch_type: str | None = None  # the family's config model_type, e.g. qwen3_moe
    languages: tuple[str, ...] = ()
    description: str = ""
    builtin: bool = True

    @property
    def role(self) -> str:
        return ROLE_OF_TYPE[self.model_type]

    def hub_ids(self, hub: str | None = None) -> list[tuple[str, Spec]]:
        """(model id, spec) of every spec, on `hub` or on any."""
        return [(src.model_id, spec) for spec in self.specs for name, src in spec.sources.items()
                if (hub is None or name == hub) and src.model_id]

    def sizes(self) -> list[int | str]:
        found = list(dict.fromkeys(s.size for s in self.specs if s.size is not None))
        return sorted(found, key=lambda size: (_number(size) is None, _number(size) or 0, str(size)))

    def formats(self) -> list[str]:
        return list(dict.fromkeys(s.format for s in self.specs))

    def to_json(self) -> dict:
        return {
            "name": self.name, "model_type": self.model_type, "abilities": list(self.abilities),
            "context_length": self.context_length, "dimensions": self.dimensions, "max_tokens": self.max_tokens,
            "architectures": list(self.architectures), "arch_type": self.arch_type, "languages": list(self.languages),
            "description": self.description, "builtin": self.builtin,
            "specs": [{"format": s.format, "size": s.size, "activated_size": s.activated_size,
                       "sources": {hub: {"model_id": src.model_id, "revision": src.revision,
                                         "quantizations": list(src.quantizations), "metadata": src.metadata,
                                         **({"file_template": src.file_template} if src.file_template else {})}
                                   for hub, src in s.sources.items()}} for s in self.specs],
        }

    @classmethod
    def from_json(cls, data: dict) -> Family:
        specs = tuple(Spec(s["format"], s.get("size"), {
            hub: HubSource(src["model_id"], src.get("revision"), tuple(src.get("quantizations") or ()),
                           dict(src.get("metadata") or {}), src.get("file_template"))
            for hub, src in (s.get("sources") or {}).items()}, s.get("activated_size")) for s in data.get("specs") or [])
        return cls(data["name"], data["model_type"], specs, tuple(data.get("abilities") or ()), data.get("context_length"),
                   data.get("dimensions"), data.get("max_tokens"), tuple(data.get("architectures") or ()),
                   data.get("arch_type"), tuple(data.get("languages") or ()), data.get("description") or "",
                   data.get("builtin", True))


def family_from_xinference(data: dict, model_type: str, builtin: bool = True) -> Family:
    """A family from Xinference's own JSON: specs with nested `model_src`, or flattened with `model_hub`.

    Every spec stays its own, in Xinference's order: a family may list two of one format and size (qwen3
    0.6B gptq Int8 and Int4, in two repos; llama-3.1-instruct 8B pytorch from meta-llama and from unsloth),
    and the first is the one Xinference itself picks. A server lists one spec dict per hub and quantization
    (`quantization`, singular): they are joined back into the package's shape (_join).
    """
    specs: list[Spec] = []
    for raw in data.get("model_specs") or []:
        if not isinstance(raw, dict):
            continue
        fmt, size = str(raw.get("model_format") or "pytorch"), _size(raw.get("model_size_in_billions"))
        if isinstance(raw.get("model_src"), dict):  # the package's form: one spec, its hubs nested
            sources = {hub: _hub_source(src) for hub, src in raw["model_src"].items()
                       if isinstance(src, dict) and src.get("model_id")}
            if sources:
                specs.append(Spec(fmt, size, sources, raw.get("activated_size_in_billions")))
        elif raw.get("model_id"):  # a server's form: one dict per hub and quantization
            _join(specs, fmt, size, raw)
    return _family(data, model_type, tuple(specs), builtin)


def _join(specs: list[Spec], fmt: str, size, raw: dict) -> None:
    """One flattened spec dict into the spec it belongs to: the same repo (another quantization of it), else
    the same spec on another hub (a quantization it offers), else a spec of its own."""
    hub = str(raw.get("model_hub") or "huggingface")
    quant = str(raw["quantization"]) if raw.get("quantization") is not None else None
    single = _hub_source({**raw, "quantizations": [quant] if quant else []})
    template = raw.get("model_file_name_template")
    if template and quant:  # the package's form of a one-repo-many-files spec
        single = replace(single, file_template=template.replace(quant, "{quantization}"))
    same = [s for s in specs if (s.format, s.size) == (fmt, size)]
    for spec in same:
        mine = spec.sources.get(hub)
        if mine is not None and mine.model_id == single.model_id and quant and quant not in mine.quantizations:
            spec.sources[hub] = replace(mine, quantizations=mine.quantizations + (quant,))
            return
    for spec in same:
        if hub not in spec.sources and (quant is None or quant in spec.quantizations()):
            spec.sources[hub] = single
            return
    specs.append(Spec(fmt, size, {hub: single}, raw.get("activated_size_in_billions")))


def _family(data: dict, model_type: str, specs: tuple[Spec, ...], builtin: bool) -> Family:
    lang = data.get("language") or data.get("model_lang") or ()
    return Family(
        name=str(data["model_name"]), model_type=model_type, specs=specs,
        abilities=tuple(data.get("model_ability") or ()), context_length=_int(data.get("context_length")),
        dimensions=_int(data.get("dimensions")), max_tokens=_int(data.get("max_tokens")),
        architectures=tuple(data.get("architectures") or ()), arch_type=data.get("model_type") if model_type == "LLM" else None,
        languages=tuple(lang) if isinstance(lang, list) else (), description=str(data.get("model_description") or "")[:300],
        builtin=builtin,
    )


def _hub_source(src: dict) -> HubSource:
    return HubSource(str(src["model_id"]), src.get("model_revision"), tuple(str(q) for q in src.get("quantizations") or ()),
                     {k: v for k, v in (src.get("model_metadata") or {}).items() if k in METADATA_KEYS},
                     src.get("model_file_name_template"))


def size_to_wire(size: float | int | str | None) -> int | str | None:
    """Xinference size ids: integers stay integers, 0.5 becomes "0_5"."""
    if size is None:
        return None
    if isinstance(size, str):
        size = float(size.replace("_", "."))
    if float(size).is_integer():
        return int(size)
    return format(float(size), "g").replace(".", "_")


def _size(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    try:
        return size_to_wire(value)
    except (TypeError, ValueError):
        return str(value)


def _number(size: int | str) -> float | None:
    try:
        return float(str(size).replace("_", "."))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
