"""The stack as RAGFlow is to have it (pure values): its models with RAGFlow's types and max tokens, the
instance, the Base URL and key RAGFlow gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from .errors import RagflowError
from .config import NO_KEY
from .remedy import root_url

MODEL_TYPES = ("chat", "embedding", "rerank")


@dataclass
class StackModel:
    uid: str
    model_type: str  # "chat" | "embedding" | "rerank"
    max_tokens: int
    dimensions: int | None = None


@dataclass
class Desired:
    instance: str
    base_url: str
    api_key: str
    models: list[StackModel]
    set_defaults: bool = True
    # The dimensions of an embedding model RAGFlow names (`name@...`) that is not the stack's: from the catalog.
    dimensions_of: Callable[[str], int | None] = field(default=lambda ref: None, compare=False, repr=False)


def ragflow_base_url(url: str) -> str:
    """The Base URL RAGFlow gets: the server root, no /v1, no trailing slash."""
    return root_url(url)


def ragflow_key(api_key: str | None) -> str:
    return api_key or NO_KEY


def check_desired(desired: Desired) -> None:
    problems = []
    if not desired.instance or desired.instance == "default":
        problems.append("the instance name must not be empty or `default` (RAGFlow refuses it)")
    seen: set[str] = set()
    for model in desired.models:
        if model.model_type not in MODEL_TYPES:
            problems.append(f"model {model.uid}: type {model.model_type!r} is none of {', '.join(MODEL_TYPES)}")
        if model.uid in seen:
            problems.append(f"model {model.uid} is listed twice")
        seen.add(model.uid)
    if not urlsplit(desired.base_url or "").hostname:
        problems.append(f"the Base URL {desired.base_url!r} has no host")
    if problems:
        raise RagflowError("cannot register this stack in RAGFlow: " + "; ".join(problems))


def model_info(desired: Desired) -> list[dict]:
    return [{"model_name": m.uid, "model_type": [m.model_type], "max_tokens": m.max_tokens} for m in desired.models]


def wanted_defaults(desired: Desired) -> dict[str, StackModel]:
    """model_type -> the stack's first model of that type."""
    out: dict[str, StackModel] = {}
    for model in desired.models:
        out.setdefault(model.model_type, model)
    return out
