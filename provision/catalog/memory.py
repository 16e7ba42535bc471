"""GPU memory a candidate needs, from the catalog: its weights (parameters x bytes per parameter of the
format and quantization, or the listed file sizes when known) and, for vLLM LLMs, the KV cache of one
sequence of `max_model_len` tokens (layers x KV heads x head dim x 2 (K and V) x 2 bytes per token),
plus what the engine itself takes. vLLM refuses to start ("No available memory for the cache blocks")
when its share cannot hold the weights and that cache: the plan says so first, with the arithmetic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from ..gpu import GiB
from .model import Family, Spec

KV_DTYPE_BYTES = 2  # fp16/bf16 KV cache, vLLM's default
ENGINE_OVERHEAD_BYTES = 1 * GiB  # CUDA context, activations and graphs of a vLLM engine, beyond weights + cache
_BITS = [  # quantization name -> bits per weight (first match)
    (r"int4|4bit|awq|q4|nf4|fp4|int4", 4.5), (r"int8|8bit|q8|fp8", 8.5), (r"q2", 2.6), (r"q3", 3.5),
    (r"q5", 5.5), (r"q6", 6.6), (r"f16|fp16|bf16|none", 16.0), (r"f32|fp32", 32.0),
]
_FORMAT_BITS = {"pytorch": 16.0, "fp8": 8.0, "fp4": 4.0, "awq": 4.5, "gptq": 4.5, "bnb": 4.5, "mlx": 16.0}


def bytes_per_parameter(format: str | None, quantization: str | None) -> float:
    """What one parameter takes on the GPU for this format and quantization (vLLM loads pytorch as 16-bit)."""
    fmt = (format or "pytorch").lower()
    quant = (quantization or "").lower()
    if quant and quant != "none":
        for pattern, bits in _BITS:
            if re.search(pattern, quant):
                return bits / 8
    if fmt == "gptq" and "8" in quant:
        return 8.5 / 8
    return _FORMAT_BITS.get(fmt, 16.0) / 8


@dataclass(frozen=True)
class KvCache:
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * KV_DTYPE_BYTES

    def arithmetic(self) -> str:
        return (f"{self.layers} layers x {self.kv_heads} KV heads x {self.head_dim} x 2 x {KV_DTYPE_BYTES} B = "
                f"{self.bytes_per_token / 1024:.0f} KiB per token")


# Attention whose cache this arithmetic would get wrong: MLA keeps one latent per layer (its rank is not in
# the metadata), so the K and V sum would be ~7x too much; provision says so rather than skip on a wrong figure.
UNSIZED_ATTENTION = {"mla": "MLA attention (a latent cache this metadata does not size)"}


def kv_cache(spec: Spec, hub: str | None = None) -> KvCache | None:
    """The KV cache geometry from a spec's model_metadata (the manifest's hub first). Hybrid attention counts
    only its full-attention layers (every `full_attention_interval`-th); linear layers keep a small fixed state.
    Sliding-window layers count in full: an upper bound, as Xinference's own estimator takes it."""
    sources = [spec.sources[hub]] if hub in spec.sources else []
    sources += [s for s in spec.sources.values() if s not in sources]
    for source in sources:
        meta = source.metadata
        layers, heads = meta.get("num_hidden_layers"), meta.get("num_attention_heads")
        if meta.get("architecture_type") in UNSIZED_ATTENTION:
            return None
        if not isinstance(layers, int) or not isinstance(heads, int) or heads <= 0:
            continue
        if meta.get("architecture_type") == "hybrid_attention":
            interval = meta.get("full_attention_interval")
            if not isinstance(interval, int) or interval <= 0:
                return None  # which layers attend in full is not said
            layers = layers // interval
        kv_heads = meta.get("num_key_value_heads") if isinstance(meta.get("num_key_value_heads"), int) else heads
        head_dim = meta.get("head_dim")
        if not isinstance(head_dim, int) and isinstance(meta.get("hidden_size"), int):
            head_dim = meta["hidden_size"] // heads
        if isinstance(head_dim, int) and head_dim > 0:
            return KvCache(layers, kv_heads, head_dim)
    return None


def unsized_attention(spec: Spec | None) -> str | None:
    """Why a spec's KV cache is not estimated (None: it is, or there is no metadata at all)."""
    for source in (spec.sources.values() if spec is not None else ()):
        kind = source.metadata.get("architecture_type")
        if kind in UNSIZED_ATTENTION:
            return UNSIZED_ATTENTION[kind]
        if kind == "hybrid_attention" and not source.metadata.get("full_attention_interval"):
            return "hybrid attention without its layer layout"
    return None


@dataclass(frozen=True)
class Estimate:
    """What a vLLM candidate needs on one GPU, and how that was worked out."""

    weights: int
    weights_said: str  # "4 B parameters x 2.00 B", "the listed weight files", "the catalog's weight files"
    kv: KvCache | None
    context: int | None  # max_model_len the cache is sized for
    context_said: str  # "options.max_model_len" | "the family's context_length" | why the cache is not sized

    @property
    def kv_bytes(self) -> int:
        return self.kv.bytes_per_token * self.context if self.kv and self.context else 0

    @property
    def need(self) -> int:
        return self.weights + self.kv_bytes + ENGINE_OVERHEAD_BYTES

    def need_at(self, context: int) -> int:
        return self.weights + (self.kv.bytes_per_token * context if self.kv else 0) + ENGINE_OVERHEAD_BYTES

    def largest_context(self, fits: Callable[[int], bool]) -> int | None:
        """The largest max_model_len (a multiple of 1024, at most the context asked for) whose need passes
        `fits` (the very test `auto` applies, rounding included); 0 when not even 1024 tokens do, None without
        KV facts."""
        if not self.kv:
            return None
        top = (self.context or 1 << 20) // 1024
        if top < 1 or not fits(self.need_at(1024)):
            return 0
        low, high = 1, top  # fits(low * 1024) holds
        while low < high:
            middle = (low + high + 1) // 2
            if fits(self.need_at(middle * 1024)):
                low = middle
            else:
                high = middle - 1
        return low * 1024

    def arithmetic(self) -> str:
        parts = [f"weights {_gib(self.weights)} ({self.weights_said})"]
        if self.kv and self.context:
            parts.append(f"KV cache {_gib(self.kv_bytes)} for max_model_len {self.context} ({self.context_said}; "
                         f"{self.kv.arithmetic()})")
        elif not self.kv and self.context_said:
            parts.append(f"KV cache not estimated: {self.context_said}")
        parts.append(f"engine {_gib(ENGINE_OVERHEAD_BYTES)}")
        return " + ".join(parts) + f" = {_gib(self.need)}"


def estimate(family: Family, spec: Spec | None, *, quantization: str | None, options: dict,
             listed_weights: int | None = None, hub: str | None = None) -> Estimate | None:
    """The estimate for a vLLM candidate of `family` (None: nothing to go on). The weights: the files the hub
    lists (the truth; a catalog size can be the activated parameters of a MoE), else the catalog's weight
    bytes, else parameters x bytes per parameter."""
    catalog_bytes = next((src.metadata.get("weights_bytes") for src in (spec.sources.values() if spec else ())
                          if isinstance(src.metadata.get("weights_bytes"), int)), None)
    if listed_weights:
        weights, said = listed_weights, "the listed weight files"
    elif catalog_bytes and len(spec.quantizations()) <= 1:  # the bytes of that one repo
        weights, said = catalog_bytes, "the catalog's weight files"
    elif spec is not None and spec.size_billions:
        per = bytes_per_parameter(spec.format, quantization)
        weights, said = int(spec.size_billions * 1e9 * per), f"{spec.size_billions:g} B parameters x {per:.2f} B"
    else:
        return None
    kv = kv_cache(spec, hub) if spec is not None and family.model_type == "LLM" else None
    wanted = options.get("max_model_len")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
        context, context_said = wanted, "options.max_model_len"
    else:
        context, context_said = family.context_length, "the family's context_length"
    if kv is None:
        context_said = unsized_attention(spec) or ""
    return Estimate(weights, said, kv, context if kv else None, context_said)


AUTO_HEADROOM = 1.10  # `auto` sizes the share for the estimate plus this much: estimates are estimates


def auto_share(need: int, total: int) -> float:
    """The share `auto` gives an estimate of `need` bytes (per GPU): need x headroom, rounded up to 0.01."""
    return share_for(int(need * AUTO_HEADROOM), total)


def share_for(need: int, total: int, margin_share: float = 0.0) -> float:
    """The smallest gpu_memory_utilization (0.01 steps) whose share of `total` holds `need`."""
    return min(1.0, math.ceil((need / total + margin_share) * 100) / 100) if total > 0 else 1.0


def _gib(count: float) -> str:
    return f"{count / GiB:.1f} GiB"
