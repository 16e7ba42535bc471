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
    """A name as people mistype it: case, dashes, dots and underscores do not count."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass
class Catalog:
    families: list[Family]
    source: str  # where the families came from, said with every answer: "xinference 4.1.0 (installed)"
    version: str | None = None  # the Xinference version they are of, when known
    authoritative: bool = True  # a name it lacks is no model of the server (a snapshot of another version: maybe)
    _by_name: dict[tuple[str, str], Family] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
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


def describe_choice(family: Family, spec: Spec | None) -> str:
    """`Qwen3-Instruct` (size_in_billions 4), said the way a manifest writes it."""
    text = f"`{family.name}`"
    if spec is not None and spec.size is not None:
        text += f" (size_in_billions {str(spec.size).replace('_', '.')})"
    return text
