"""The catalog: every family by type and name, where the families came from, and the lookups on them (a
name, a spec, the source for a hub, what a mistyped name or a hub id most likely meant).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .model import MODEL_TYPES, ROLE_OF_TYPE, Family, Spec, size_to_wire

TYPE_WORDS = {"LLM": "LLM", "embedding": "embedding model", "rerank": "rerank model"}


def _key(text: str) -> str:
    """A name as people mistype it: case, dashes, dots and underscores do not count, but a dot between
    digits does (`qwen2.5-7b` is not `Qwen2-57B`)."""
    return re.sub(r"[^a-z0-9]", "", re.sub(r"(?<=\d)[._](?=\d)", "p", text.lower()))


@dataclass
class Catalog:
    families: list[Family]
    source: str  # where the families came from, said with every answer: "xinference 4.1.0 (installed)"
    version: str | None = None  # the Xinference version they are of, when known
    authoritative: bool = True  # a name it lacks is no model of the server (a snapshot of another version: maybe)
    _by_name: dict[tuple[str, str], Family] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from .errata import corrected

        self.families = [corrected(f) for f in self.families]
        for family in self.families:
            self._by_name.setdefault((family.model_type, family.name), family)

    # -- names ----------------------------------------------------------------------------------------

    def family(self, model_type: str, name: str) -> Family | None:
        """The family of that exact name (Xinference's names are case-sensitive)."""
        return self._by_name.get((model_type, name))

    def of_type(self, model_type: str) -> list[Family]:
        return [f for f in self.families if f.model_type == model_type]

    def elsewhere(self, model_type: str, name: str) -> Family | None:
        """The family of that name among the other model types (an embedding model named as a reranker)."""
        return next((f for t in MODEL_TYPES if t != model_type for f in [self.family(t, name)] if f), None)

    def suggestions(self, model_type: str, name: str, source: str | None = None,
                    limit: int = 3) -> list[tuple[Family, Spec | None]]:
        """What `name` most likely meant among the families of `model_type`: the family whose hub id is the
        manifest's `source`, the same name in another case, a family with `name` as a hub id (or its name
        part, or its start: `Qwen3-4B`), then the closest names."""
        wanted, tail = _key(name), _key(name.split("/")[-1])
        families = self.of_type(model_type)
        found: list[tuple[Family, Spec | None]] = []

        def add(family: Family, spec: Spec | None) -> None:
            if all(f is not family for f, _ in found):
                found.append((family, spec))

        def by_id(test) -> None:
            for family in families:
                for model_id, spec in family.hub_ids():
                    if test(_key(model_id), _key(model_id.split("/")[-1])):
                        add(family, spec)
                        break

        if source:
            by_id(lambda full, short: full == _key(source))
        for family in families:
            if _key(family.name) == wanted:
                add(family, None)
        by_id(lambda full, short: wanted in (full, short) or tail == short)
        if len(tail) >= 5:
            by_id(lambda full, short: short.startswith(tail))
        names = {_key(f.name): f for f in families}
        for close in difflib.get_close_matches(wanted, list(names), n=limit, cutoff=0.6):
            add(names[close], None)
        return found[:limit]

    # -- specs ----------------------------------------------------------------------------------------

    def specs(self, family: Family, *, size=None, format: str | None = None, quantization: str | None = None,
              hub: str | None = None) -> list[Spec]:
        """The family's specs that fit what the manifest says (None: any)."""
        wire = size_to_wire(size) if size is not None else None
        fits = []
        for spec in family.specs:
            if format is not None and spec.format.lower() != format.lower():
                continue
            if wire is not None and spec.size is not None and str(spec.size) != str(wire):
                continue
            if wire is not None and spec.size is None:
                continue
            if quantization is not None:
                quants = [q.lower() for q in spec.quantizations(hub)]
                if quantization.lower() not in quants:
                    continue
            if hub is not None and hub not in spec.sources:
                continue
            fits.append(spec)
        return fits

    def choose(self, family: Family, *, size=None, format: str | None = None, quantization: str | None = None,
               hub: str | None = None, source: str | None = None) -> Choice:
        """The spec a candidate means, and the hub id to fetch it from when the manifest gives no `source`.

        A given `source` names its spec (whatever the size says). Left out, the source is taken from the first
        spec that fits, the plain pytorch weights first, in Xinference's order; it cannot be when the family has
        several sizes and none is given, when the hub has one repo per quantization and none is given, or when
        the repo holds every quantization's file (GGUF): provision fetches whole repos."""
        fits = self.specs(family, size=size, format=format, quantization=quantization)
        fits.sort(key=lambda s: s.format != "pytorch")  # stable: Xinference's order within a format
        if source:
            for spec in self.specs(family, size=size, format=format):
                for src in spec.sources.values():
                    if source in (src.model_id, src.model_id_for(quantization)) or _templated_match(src.model_id, source):
                        return Choice(spec, None, None)
            sizes = {s.size for s in fits}
            return Choice(fits[0] if len(sizes) == 1 and fits else None, None, None)
        sizes = list(dict.fromkeys(s.size for s in fits if s.size is not None))
        if size is None and len(sizes) > 1:
            offered = ", ".join(str(x).replace("_", ".") for x in family.sizes())
            return Choice(None, None, None, ("size_in_billions", f"`{family.name}` comes in several sizes ({offered})",
                                             "give size_in_billions: the source, the launch and the memory estimate follow it"))
        on_hub = [s for s in fits if hub in s.sources]
        spec = on_hub[0] if on_hub else (fits[0] if fits else None)
        if spec is None or not on_hub:
            return Choice(spec, None, None)
        src = spec.sources[hub]
        if src.file_template:
            return Choice(spec, None, None, ("source", f"the catalog's {spec.format} repo for `{family.name}` "
                                             f"({src.model_id}) holds every quantization, and provision fetches "
                                             "whole repos", "give source (a repo of the one quantization) or "
                                             "local_path, or pick a format with one repo per model (pytorch, gptq, awq)"))
        model_id = src.model_id_for(quantization)
        if model_id is None:
            offered = ", ".join(src.quantizations)
            return Choice(spec, None, None, ("quantization", f"`{family.name}`{_sized(spec.size)} {spec.format} has one "
                                             f"repo per quantization ({src.model_id})",
                                             f"give quantization: {offered}"))
        return Choice(spec, model_id, src.revision)

    # -- search -----------------------------------------------------------------------------------------

    def search(self, query: str | None = None, role: str | None = None) -> list[Family]:
        """Families whose name or a hub id holds `query` (case and punctuation ignored), of `role` (chat: the LLMs
        with the chat ability)."""
        wanted = _key(query or "")
        found = []
        for family in self.families:
            if role and ROLE_OF_TYPE[family.model_type] != role:
                continue
            if role == "chat" and family.abilities and "chat" not in family.abilities:
                continue  # a generate-only LLM cannot serve RAGFlow's chat
            keys = [_key(family.name)] + [_key(i) for i, _ in family.hub_ids()]
            if not wanted or any(wanted in k for k in keys):
                found.append(family)
        return sorted(found, key=lambda f: (f.model_type != "LLM", f.model_type, f.name.lower()))


@dataclass(frozen=True)
class Choice:
    """What Catalog.choose found: the spec, the hub id to fetch (None: none derived), and why not."""

    spec: Spec | None
    source: str | None
    revision: str | None
    problem: tuple[str, str, str] | None = None  # (manifest key, message, hint)


def _templated_match(template: str, source: str) -> bool:
    if "{quantization}" not in template:
        return False
    head, tail = template.split("{quantization}", 1)
    return source.startswith(head) and source.endswith(tail) and len(source) > len(head) + len(tail)


def _sized(size) -> str:
    return f" {str(size).replace('_', '.')}B" if size is not None else ""


def describe_choice(family: Family, spec: Spec | None) -> str:
    """`Qwen3-Instruct` (size_in_billions 4), said the way a manifest writes it."""
    text = f"`{family.name}`"
    if spec is not None and spec.size is not None:
        text += f" (size_in_billions {str(spec.size).replace('_', '.')})"
    return text
