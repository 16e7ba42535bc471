"""`provision init`: a valid, commented manifest for this machine, its models picked from the catalog to
fit the GPU memory that is free (or the CPU when there is none), each with a fallback chain: the way a
person picks from a table of models by memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import Catalog, memory, sources
from ..errors import UsageError
from ..gpu import GiB, NvmlSource

# Best first. (name, size_in_billions, max_model_len): the chat models worth running for RAG, by memory.
CHAT_BY_MEMORY = [("Qwen3-Instruct", 30, 32768), ("Qwen3-Instruct", 4, 32768), ("qwen2.5-instruct", 7, 32768),
                  ("Qwen3-Instruct", 4, 8192), ("qwen2.5-instruct", 3, 8192), ("qwen2.5-instruct", "1_5", 8192)]
CPU_CHAT = ("qwen2.5-instruct", "0_5")
# (name, GPU memory it takes with sentence_transformers on a GPU): multilingual first, then the small ones.
EMBEDDINGS = [("bge-m3", 2.5 * GiB), ("bge-small-en-v1.5", 0.3 * GiB)]
RERANKERS = [("bge-reranker-v2-m3", 2.5 * GiB), ("bge-reranker-base", 1.3 * GiB)]
MARGIN = 2 * GiB  # left free on the card for others' growth


@dataclass
class InitResult:
    text: str
    gpu: str  # what the choice was made for
    choices: list[str] = field(default_factory=list)  # one line per model: what and why
    written: str | None = None
    exit_code: int = 0


def init(gpu_free_gib: float | None, docker: bool, output: str | None, force: bool = False) -> InitResult:
    catalog = sources.local()
    if gpu_free_gib is not None:
        free, where = int(gpu_free_gib * GiB), f"{gpu_free_gib:g} GiB of GPU memory free (--gpu-free-gib)"
    else:
        gpus = NvmlSource().gpus()
        best = max(gpus, key=lambda g: g.free_bytes, default=None)
        free = best.free_bytes if best else 0
        where = f"{best.label} {best.name}: {best.free_bytes / GiB:.1f} GiB free" if best else "no GPU (NVML)"
    result = InitResult("", where)
    models = _pick(catalog, free, result.choices)
    result.text = _manifest(models, docker, where, catalog.source)
    if output:
        target = Path(output)
        if target.exists() and not force:
            raise UsageError(f"{target} exists", hint="pass --force to replace it, or another -o")
        target.write_text(result.text, encoding="utf-8")
        result.written = str(target)
    return result


def _pick(catalog: Catalog, free: int, why: list[str]) -> list[str]:
    """Chat first (it gains most from the GPU), then embedding and rerank in what is left; what does not fit
    runs on the CPU."""
    room = max(0, free - MARGIN)
    on_gpu = room > 2 * GiB
    chat = _pick_chat(catalog, room) if on_gpu else None
    if chat is not None:
        name, size, context, need = chat
        room -= need
        chat_entry = _chat_gpu(catalog, name, size, context)
        why.append(f"chat: {name} {str(size).replace('_', '.')}B on vLLM, max_model_len {context} "
                   f"(~{need / GiB:.1f} GiB), falling back to Transformers and then {CPU_CHAT[0]} 0.5B on the CPU")
    else:
        chat_entry = _chat_cpu(catalog)
        why.append(f"chat: {CPU_CHAT[0]} 0.5B with Transformers on the CPU"
                   + (" (no chat model fits the GPU's free memory)" if on_gpu else ""))
    entries = []
    for role, table in (("embedding", EMBEDDINGS), ("rerank", RERANKERS)):
        fitting = [(n, need) for n, need in table if catalog.family(role, n) and on_gpu and need <= room]
        if fitting:
            name, need = fitting[0]
            room -= need
            entries.append(_small(role, name, catalog, gpu=True))
            why.append(f"{role}: {name} on the GPU (~{need / GiB:.1f} GiB)")
        else:
            small = table[-1][0]
            entries.append(_small(role, small, catalog, gpu=False))
            why.append(f"{role}: {small} on the CPU" + (" (the GPU has no room left for it)" if on_gpu else ""))
    return [chat_entry, *entries]


def _pick_chat(catalog: Catalog, room: int) -> tuple[str, int | str, int, int] | None:
    for name, size, context in CHAT_BY_MEMORY:
        family = catalog.family("LLM", name)
        specs = catalog.specs(family, size=size, format="pytorch") if family else []
        if not specs:
            continue
        estimate = memory.estimate(family, specs[0], quantization="none", options={"max_model_len": context})
        if estimate is not None and estimate.need * memory.AUTO_HEADROOM <= room:
            return name, size, context, int(estimate.need * memory.AUTO_HEADROOM)
    return None


def _source(catalog: Catalog, model_type: str, name: str, size=None) -> str:
    family = catalog.family(model_type, name)
    specs = catalog.specs(family, size=size, format="pytorch", hub="modelscope") if family else []
    return specs[0].sources["modelscope"].model_id if specs else ""


def _small(role: str, name: str, catalog: Catalog, gpu: bool) -> str:
    lines = [f"  - role: {role}", f"    uid: {name}", f"    name: {name}",
             f"    source: {_source(catalog, role, name)}   # from the catalog",
             "    engine: sentence_transformers"]
    if gpu:
        lines += ["    n_gpu: auto", "    fallbacks:", "      - n_gpu: null      # the CPU, if the GPU will not take it"]
    return "\n".join(lines) + "\n"


def _chat_gpu(catalog: Catalog, name: str, size, context: int) -> str:
    cpu_name, cpu_size = CPU_CHAT
    return "\n".join([
        "  - role: chat", f"    uid: {name.lower()}-{str(size).replace('_', '-')}b", f"    name: {name}",
        f"    size_in_billions: {str(size).replace('_', '.')}", "    format: pytorch", "    quantization: none",
        f"    source: {_source(catalog, 'LLM', name, size)}   # from the catalog",
        "    engine: vLLM",
        "    gpu_memory_utilization: auto   # the smallest share that holds the weights and the KV cache",
        f"    options: {{max_model_len: {context}}}",
        "    fallbacks:",
        "      - engine: Transformers       # slower, but starts where vLLM's memory check refuses",
        "        n_gpu: auto",
        "        gpu_memory_utilization: null",
        "        options: {}",
        f"      - name: {cpu_name}             # the last resort: a small model on the CPU",
        f"        size_in_billions: {cpu_size.replace('_', '.')}",
        f"        source: {_source(catalog, 'LLM', cpu_name, cpu_size)}",
        "        engine: Transformers",
        "        n_gpu: null",
    ]) + "\n"


def _chat_cpu(catalog: Catalog) -> str:
    name, size = CPU_CHAT
    return "\n".join([
        "  - role: chat", "    uid: qwen2.5-0.5b-chat", f"    name: {name}", f"    size_in_billions: {size.replace('_', '.')}",
        "    format: pytorch", "    quantization: none", f"    source: {_source(catalog, 'LLM', name, size)}   # from the catalog",
        "    engine: Transformers", "    n_gpu: null",
    ]) + "\n"


def _manifest(entries: list[str], docker: bool, where: str, catalog: str) -> str:
    host = "0.0.0.0   # RAGFlow runs in Docker: it reaches the server through host.docker.internal" if docker \
        else "127.0.0.1"
    return (
        f"# Written by `provision init` for {where}.\n"
        f"# Models picked from {catalog}; check with `provision validate` and `provision plan`.\n"
        "# `provision schema` describes every key; `provision models NAME` shows a model in full.\n"
        "version: 1\n"
        "name: rag-stack\n"
        "server:\n"
        f"  host: {host}\n"
        "  port: 9997\n"
        "  auth: true      # an admin and an API key for RAGFlow, kept in the state folder (0600)\n"
        "download:\n"
        "  hub: modelscope\n"
        "  models_dir: models\n"
        "models:\n" + "".join(entries) +
        "ragflow:\n"
        f"  docker: {'true' if docker else 'false'}\n"
    )
