"""The engine table, in one place: which engines each model type has, how users spell them, which need a
GPU, the share of GPU memory vLLM gets by default, and what a server's GET /v1/engines answer means.

Xinference's own spellings (reference/xinference.md); lookup is case-insensitive, and the aliases cover
what users write from habit. Xinference has no `transformers` engine for embedding/rerank: the
sentence_transformers engine is the transformers-based one, and asking for `transformers` fails with
"cannot be run on engine transformers".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("chat", "embedding", "rerank")
MODEL_TYPE_OF_ROLE = {"chat": "LLM", "embedding": "embedding", "rerank": "rerank"}

ENGINES = {
    "LLM": ["vLLM", "SGLang", "Transformers", "llama.cpp", "MLX", "LMDEPLOY"],
    "embedding": ["sentence_transformers", "flag", "vllm", "llama.cpp"],
    "rerank": ["sentence_transformers", "vllm", "llama.cpp"],
}
ENGINE_ALIASES = {
    "embedding": {"transformers": "sentence_transformers", "sentence-transformers": "sentence_transformers"},
    "rerank": {"transformers": "sentence_transformers", "sentence-transformers": "sentence_transformers"},
    "LLM": {"llamacpp": "llama.cpp", "llama_cpp": "llama.cpp"},
}
DEFAULT_ENGINE = {"embedding": "sentence_transformers", "rerank": "sentence_transformers"}  # LLMs need one
GPU_ONLY_ENGINES = {"vllm", "sglang", "lmdeploy"}
# The Python distributions (as pip names them) an engine needs in the server's Python; lower-case keys.
ENGINE_PACKAGES = {
    "sentence_transformers": ("torch", "sentence-transformers"),
    "transformers": ("torch", "transformers"),
    "vllm": ("vllm",),
    "sglang": ("sglang",),
    "lmdeploy": ("lmdeploy",),
    "llama.cpp": ("xllamacpp",),
    "flag": ("torch", "FlagEmbedding"),
    "mlx": ("mlx-lm",),
}

# vLLM reserves this share of the card's TOTAL memory and refuses to start when less is free; its own
# default (0.9) fails as soon as anything else holds memory on the card. These defaults let chat +
# embedding + rerank all run on vLLM on one card (0.95) while chat gets most of it. A manifest value
# always wins; an OOM reason says which value was sent and whether it was this default.
DEFAULT_GPU_MEMORY_UTILIZATION = {"LLM": 0.75, "embedding": 0.1, "rerank": 0.1}


def canonical_engine(model_type: str, engine: str) -> str | None:
    """The engine name Xinference expects, or None when the model type has no such engine."""
    key = engine.strip().lower()
    alias = ENGINE_ALIASES.get(model_type, {}).get(key)
    if alias:
        return alias
    for known in ENGINES[model_type]:
        if known.lower() == key:
            return known
    return None


def is_gpu_only(engine: str) -> bool:
    return engine.lower() in GPU_ONLY_ENGINES


def is_vllm(engine: str) -> bool:
    return engine.lower() == "vllm"


def gpu_memory_utilization(model_type: str, setting: float | str | None) -> tuple[float, bool]:
    """(the share sent to vLLM, True when it is provision's default rather than the manifest's).

    `auto` is resolved by the plan; should it reach here unresolved, the role's default is sent, never
    the word itself.
    """
    if setting is None or setting == "auto":
        return DEFAULT_GPU_MEMORY_UTILIZATION.get(model_type, 0.75), True
    return float(setting), False


@dataclass(frozen=True)
class EngineVerdict:
    """What a server's GET /v1/engines answer says of one engine for one model."""

    summary: str  # "ok" | "not usable: <why>" | "not offered: it has ..." | "unknown: ..."
    kind: str | None = None  # engine_missing | engine_unsupported (a launch.FailureKind value); None: no objection
    reason: str | None = None
    hint: str | None = None

    @property
    def blocks(self) -> bool:
        return self.kind is not None


def engine_verdict(engine: str, name: str, offered: Any) -> EngineVerdict:
    """Judge `engine` for model `name` from the server's /v1/engines answer (engine -> params or a reason).

    An answer that is not a non-empty mapping (unknown name, an older server) is no objection: the launch
    decides. Plan and launch both use this, so they say the same thing.
    """
    if not isinstance(offered, dict) or not offered:
        return EngineVerdict(f"unknown: the server lists no engines for {name}; the launch decides")
    match = next((k for k in offered if k.lower() == engine.lower()), None)
    if match is None:
        names = ", ".join(sorted(offered))
        return EngineVerdict(f"not offered: it has {names}", "engine_unsupported",
                             f"Xinference has no {engine} engine for {name}; it has: {names}",
                             "pick one of those engines")
    if isinstance(offered[match], str):
        why = offered[match]
        return EngineVerdict(f"not usable: {why}", "engine_missing",
                             f"engine {engine} is not usable on this server: {why}",
                             "install the engine into the server's Python, or let the chain move on")
    return EngineVerdict("ok")
