"""What a model folder holds, in one place: config files, weight files, and the names that are not the
model (hidden entries, partial downloads). Used by the downloader, the plan's arithmetic and the mirror.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

CONFIG_FILES = ("config.json", "modules.json", "config_sentence_transformers.json")
# Weight files, in order of preference: a repo with safetensors often carries .bin copies too.
WEIGHT_GROUPS = (("*.safetensors",), ("*.gguf",), ("pytorch_model*.bin", "model*.bin", "*.pt", "*.pth"))
WEIGHT_PATTERNS = tuple(pattern for group in WEIGHT_GROUPS for pattern in group)
PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")  # what the hub clients write while a file is on its way


def is_hidden(name: str) -> bool:
    """Not part of the model: a dot entry (.git, .cache, our record) or a partial download."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


def is_weight_file(path: str) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch(name, pattern) for pattern in WEIGHT_PATTERNS)


def folder_problem(names: Iterable[str]) -> str | None:
    """Why a folder with these relative paths does not hold a loadable model (config + weights), or None."""
    names = list(names)
    if not names:
        return "is empty"
    if any(fnmatch(name, "*.gguf") for name in names):
        return None  # a GGUF file carries its own config
    if not any(name in CONFIG_FILES for name in names):
        return "holds no model config (config.json, or modules.json for sentence-transformers)"
    if not any(is_weight_file(name) for name in names):
        return "holds no weights (*.safetensors, pytorch_model*.bin, *.gguf, ...)"
    return None


def weight_bytes(sizes: Mapping[str, int], quantization: str | None = None) -> int | None:
    """Bytes of the weight files among `sizes` (relative path -> size); None when there are none.

    One format only (safetensors before gguf before .bin): repos often carry the same weights twice. Of
    several GGUF files, those naming the quantization, else the largest one.
    """
    for patterns in WEIGHT_GROUPS:
        chosen = [p for p in sizes if any(fnmatch(PurePosixPath(p).name, pat) for pat in patterns)]
        if not chosen:
            continue
        if patterns == ("*.gguf",) and len(chosen) > 1:
            named = [p for p in chosen if quantization and quantization.lower() in p.lower()]
            chosen = named or [max(chosen, key=lambda p: sizes[p])]
        return sum(sizes[p] for p in chosen)
    return None


def safe_relpath(raw: str) -> Path | None:
    """A repo-relative path, or None when it could leave the model folder."""
    if not raw or "\x00" in raw or "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        return None
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return Path(*parts)
