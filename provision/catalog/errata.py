"""Catalog entries whose numbers contradict the models they name, corrected here, each with its reason.

A wrong `dimensions` would refuse the genuine weights (the weights check) and tell RAGFlow a wrong size;
a wrong `max_tokens` would tell RAGFlow a wrong limit. Only what the model's own config and card show
belongs here. Applied to every catalog, whatever its source, so answers agree.
"""

from __future__ import annotations

from dataclasses import replace

from .model import Family

# (model_type, name) -> (corrected fields, why)
ERRATA: dict[tuple[str, str], tuple[dict, str]] = {
    ("embedding", "jina-embeddings-v2-base-en"): (
        {"dimensions": 768},
        "Xinference 4.1.0 lists 512 (the small model's size); the base model is a JinaBert of hidden size 768, "
        "137 M parameters, and gives 768-dimension vectors",
    ),
}


def corrected(family: Family) -> Family:
    fix = ERRATA.get((family.model_type, family.name))
    if fix is None or all(getattr(family, key) == value for key, value in fix[0].items()):
        return family
    return replace(family, **fix[0])
