"""What the weights on disk say about the name they are launched under.

Xinference does not check that a folder holds the model its name says: a 384-dimension MiniLM launched as
`bge-m3` (1024 dimensions, 8192 tokens) comes up READY, and RAGFlow is told the wrong numbers. The folder's
config.json (and sentence-transformers' modules.json / 1_Pooling/config.json) is read and compared with the
catalog before the launch: the embedding size against `dimensions`, max_position_embeddings against
`max_tokens`, and the architecture / model_type against the LLM family's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .index import Catalog
from .model import Family

_SUFFIXES = re.compile(r"(forcausallm|forconditionalgeneration|forsequenceclassification|formaskedlm|model|moe|lmhead)$")
POSITION_SLACK = 2  # RoBERTa-style configs count two extra positions (8194 for an 8192-token model)


@dataclass(frozen=True)
class WeightFacts:
    dimensions: int | None = None
    max_positions: int | None = None
    architectures: tuple[str, ...] = ()
    model_type: str | None = None

    def describe(self) -> str:
        parts = []
        if self.dimensions:
            parts.append(f"{self.dimensions} dimensions")
        if self.max_positions:
            parts.append(f"{self.max_positions} positions")
        if self.architectures or self.model_type:
            parts.append(", ".join(self.architectures) or str(self.model_type))
        return ", ".join(parts) or "nothing readable"


def read_facts(folder: Path) -> WeightFacts | None:
    """The folder's own account of itself; None when it has no readable config.json (a GGUF folder, say)."""
    config = _json(folder / "config.json")
    if not isinstance(config, dict):
        return None
    dimensions = None
    modules = _json(folder / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and "Pooling" in str(module.get("type", "")):
            pooling = _json(folder / str(module.get("path", "")) / "config.json")
            if isinstance(pooling, dict) and isinstance(pooling.get("word_embedding_dimension"), int):
                dimensions = pooling["word_embedding_dimension"]
    if dimensions is None and isinstance(config.get("hidden_size"), int):
        dimensions = config["hidden_size"]
    arches = config.get("architectures")
    return WeightFacts(
        dimensions=dimensions,
        max_positions=config.get("max_position_embeddings") if isinstance(config.get("max_position_embeddings"), int) else None,
        architectures=tuple(str(a) for a in arches) if isinstance(arches, list) else (),
        model_type=str(config["model_type"]) if config.get("model_type") else None,
    )


def mismatch(family: Family, facts: WeightFacts) -> str | None:
    """Why these weights are not the model `family` names (None: nothing contradicts it)."""
    if family.model_type == "embedding" and family.dimensions and facts.dimensions \
            and facts.dimensions != family.dimensions:
        return f"the weights give {facts.dimensions}-dimension vectors, `{family.name}` is {family.dimensions}"
    if family.model_type in ("embedding", "rerank") and family.max_tokens and facts.max_positions \
            and facts.max_positions + POSITION_SLACK < family.max_tokens:
        return (f"the weights take {facts.max_positions} positions, `{family.name}` is said to take "
                f"{family.max_tokens} tokens")
    if family.model_type == "LLM":
        theirs, ours = _stems(facts.architectures, facts.model_type), _stems(family.architectures, family.arch_type)
        if theirs and ours and not theirs & ours:
            said = ", ".join(facts.architectures) or facts.model_type
            return f"the weights are {said}, `{family.name}` is {', '.join(family.architectures) or family.arch_type}"
    return None


def matching(catalog: Catalog, model_type: str, facts: WeightFacts, limit: int = 4) -> list[str]:
    """Built-in names whose catalog entry these weights do fit (what the folder most likely is)."""
    found = [f.name for f in catalog.of_type(model_type) if f.builtin and (
        (model_type != "LLM" and (f.dimensions or f.max_tokens) and mismatch(f, facts) is None
         and (model_type != "embedding" or f.dimensions == facts.dimensions))
        or (model_type == "LLM" and _stems(facts.architectures, facts.model_type)
            & _stems(f.architectures, f.arch_type)))]
    return found[:limit]


def _stems(architectures, model_type) -> set[str]:
    """`qwen3` of Qwen3ForCausalLM, Qwen3MoeForCausalLM, qwen3_moe: the lineage, not the variant."""
    names = [*architectures, *([model_type] if model_type else [])]
    stems = set()
    for name in names:
        key = re.sub(r"[^a-z0-9]", "", str(name).lower())
        previous = None
        while key != previous:
            previous, key = key, _SUFFIXES.sub("", key)
        if key:
            stems.add(key)
    return stems


def _json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def verdict(catalog: Catalog | None, model_type: str, name: str, folder: Path | None,
            facts: WeightFacts | None = None) -> tuple[str, str] | None:
    """(why the weights in `folder` are not `name`, what to do), or None: they fit, or nothing tells."""
    family = catalog.family(model_type, name) if catalog is not None else None
    if family is None or (facts is None and folder is None):
        return None
    facts = facts if facts is not None else read_facts(folder)
    problem = mismatch(family, facts) if facts is not None else None
    if problem is None:
        return None
    fits = [n for n in matching(catalog, model_type, facts) if n != name]
    if fits:
        hint = f"these weights fit {', '.join(f'`{n}`' for n in fits)}: set `name` to one of them"
    else:
        hint = ("no built-in model fits them: register them as a custom model on the server "
                "(`xinference register --model-type ...`) and use its name")
    return problem, hint + "; or `accept_weights_mismatch: true` to launch them as they are"
