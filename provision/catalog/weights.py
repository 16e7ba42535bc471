"""What the weights on disk say about the name they are launched under.

Xinference does not check that a folder holds the model its name says: a 384-dimension MiniLM launched as
`bge-m3` (1024 dimensions, 8192 tokens) comes up READY, and RAGFlow is told the wrong numbers. The folder's
config.json (and sentence-transformers' modules.json, its Pooling and Dense modules' configs, and
sentence_bert_config.json) is read and compared with the catalog before the launch: the embedding size
against `dimensions`, the tokens it takes (max_position_embeddings, or a shorter max_seq_length) against
`max_tokens`, and the architecture / model_type against the LLM family's.
"""

from __future__ import annotations

import difflib
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
    max_positions: int | None = None  # max_position_embeddings: more tokens cannot be had
    max_seq_length: int | None = None  # sentence-transformers truncates there (sentence_bert_config.json)
    architectures: tuple[str, ...] = ()
    model_type: str | None = None
    shape: tuple[int | None, ...] = (None, None, None)  # (hidden_size, num_hidden_layers, vocab_size): which LLM

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
    for module in modules if isinstance(modules, list) else []:  # in order: the last Pooling or Dense says the size
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        settings = _json(folder / str(module.get("path", "")) / "config.json") if kind else None
        if not isinstance(settings, dict):
            continue
        if "Pooling" in kind and isinstance(settings.get("word_embedding_dimension"), int):
            dimensions = settings["word_embedding_dimension"]
        elif "Dense" in kind and isinstance(settings.get("out_features"), int):
            dimensions = settings["out_features"]
    if dimensions is None and isinstance(config.get("hidden_size"), int):
        dimensions = config["hidden_size"]
    positions = _positive(config.get("max_position_embeddings"))
    sequence = _json(folder / "sentence_bert_config.json")
    arches = config.get("architectures")
    return WeightFacts(
        dimensions=dimensions,
        max_positions=positions,
        max_seq_length=_positive(sequence.get("max_seq_length")) if isinstance(sequence, dict) else None,
        architectures=tuple(str(a) for a in arches) if isinstance(arches, list) else (),
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        shape=(_positive(config.get("hidden_size")), _positive(config.get("num_hidden_layers")),
               _positive(config.get("vocab_size"))),
    )


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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


def remarks(family: Family | None, facts: WeightFacts | None) -> list[str]:
    """What the weights say that is worth knowing but no reason to refuse them: sentence-transformers keeps
    fewer tokens than the catalog's max_tokens (RAGFlow is told the catalog's number; the rest is cut)."""
    if family is None or facts is None or not facts.max_seq_length or not family.max_tokens:
        return []
    if facts.max_seq_length < family.max_tokens:
        return [f"sentence-transformers keeps {facts.max_seq_length} tokens (max_seq_length), the catalog says "
                f"{family.max_tokens}: longer chunks are cut"]
    return []


def matching(catalog: Catalog, model_type: str, facts: WeightFacts, limit: int = 4, asked: str = "") -> list[str]:
    """Built-in names whose catalog entry these weights do fit (what the folder most likely is), the closest
    to the name `asked` first. An LLM fits by lineage and, when the config says it, by shape (hidden size,
    layers and vocabulary of one of its specs)."""
    if model_type != "LLM":
        found = [f for f in catalog.of_type(model_type) if f.builtin and (f.dimensions or f.max_tokens)
                 and mismatch(f, facts) is None and (model_type != "embedding" or f.dimensions == facts.dimensions)]
    else:
        stems = _stems(facts.architectures, facts.model_type)
        found = [f for f in catalog.of_type("LLM") if f.builtin and stems & _stems(f.architectures, f.arch_type)]
        if sum(x is not None for x in facts.shape) >= 2:
            found = [f for f in found if any(_same_shape(src.metadata, facts.shape)
                                             for spec in f.specs for src in spec.sources.values())]
    names = [f.name for f in found]
    names.sort(key=lambda n: -difflib.SequenceMatcher(None, n.lower(), asked.lower()).ratio())
    return names[:limit]


def _same_shape(metadata: dict, shape: tuple) -> bool:
    """Every number both the config and the catalog give agrees (and at least two are given)."""
    theirs = (metadata.get("hidden_size"), metadata.get("num_hidden_layers"), metadata.get("vocab_size"))
    both = [(a, b) for a, b in zip(shape, theirs) if a is not None and b is not None]
    return len(both) >= 2 and all(a == b for a, b in both)


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
    fits = [n for n in matching(catalog, model_type, facts, asked=name) if n != name]
    if fits:
        hint = f"these weights fit {', '.join(f'`{n}`' for n in fits)}: set `name` to one of them"
    else:
        hint = ("no built-in model fits them: register them as a custom model on the server "
                "(`xinference register --model-type ...`) and use its name")
    return problem, hint + "; or `accept_weights_mismatch: true` to launch them as they are"
