"""Where the catalog comes from, best first:

1. the server the manifest targets, when one answers: `GET /v1/model_registrations/{type}?detailed=true`
   knows the custom models registered on it too;
2. the installed `xinference` package: the JSON files under `xinference/model/*/models/`, read as files
   (importing xinference takes seconds);
3. the snapshot provision ships, made from the pinned xinference by `scripts/catalog_snapshot.py`, for a
   client-only install. Its version is recorded; a name it lacks may exist on a server of another version,
   so from the snapshot an unknown name is a warning, not an error.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .index import Catalog
from .model import MODEL_TYPES, Family, family_from_xinference

SNAPSHOT = Path(__file__).with_name("snapshot.json.gz")
PINNED_XINFERENCE = "4.1.0"  # what pyproject's server extra installs; the snapshot must be of it
_FOLDERS = {"LLM": "llm", "embedding": "embedding", "rerank": "rerank"}


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("xinference")
    except importlib.metadata.PackageNotFoundError:
        return None


def package_folder() -> Path | None:
    """xinference/model of the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec("xinference")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if folder.is_dir() else None


@lru_cache(maxsize=1)
def from_package() -> Catalog | None:
    """The installed xinference's built-in models, or None when it is not installed."""
    folder = package_folder()
    if folder is None:
        return None
    families: list[Family] = []
    for model_type in MODEL_TYPES:
        for path in sorted((folder / _FOLDERS[model_type] / "models").glob("*.json")):
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # one unreadable file must not hide the rest
            for entry in entries if isinstance(entries, list) else [entries]:
                if isinstance(entry, dict) and entry.get("model_name"):
                    families.append(family_from_xinference(entry, model_type))
    version = installed_version()
    return Catalog(families, f"xinference {version or '?'} (installed)", version, authoritative=True)


@lru_cache(maxsize=1)
def from_snapshot() -> Catalog:
    """The catalog provision ships. Its names are the truth only for a server of the same version."""
    data = json.loads(gzip.decompress(SNAPSHOT.read_bytes()))
    version = data.get("xinference")
    families = [Family.from_json(f) for f in data.get("families", [])]
    return Catalog(families, f"provision's snapshot of xinference {version}", version, authoritative=False)


def from_server(client: Any, timeout: float = 10.0) -> Catalog | None:
    """What the server knows, custom models included; None when it does not answer or will not say."""
    from ..errors import ProvisionError

    families: list[Family] = []
    try:
        for model_type in MODEL_TYPES:
            body = client.get(f"/v1/model_registrations/{model_type}", params={"detailed": "true"}, timeout=timeout)
            for entry in body if isinstance(body, list) else []:
                if isinstance(entry, dict) and entry.get("model_name"):
                    families.append(family_from_xinference(entry, model_type, builtin=bool(entry.get("is_builtin", True))))
        version = client.get("/v1/cluster/version", timeout=timeout)
    except (ProvisionError, ValueError):
        return None
    version = version.get("version") if isinstance(version, dict) else (version if isinstance(version, str) else None)
    if not families:
        return None
    return Catalog(families, f"the server at {client.base_url}" + (f" (xinference {version})" if version else ""),
                   version, authoritative=True)


def local() -> Catalog:
    """The best catalog without a server: the installed package, else the snapshot."""
    return from_package() or from_snapshot()


def snapshot_document(catalog: Catalog) -> bytes:
    """The snapshot file's bytes for `catalog` (scripts/catalog_snapshot.py writes them)."""
    doc = {"xinference": catalog.version, "generated_by": "scripts/catalog_snapshot.py",
           "families": [f.to_json() for f in catalog.families if f.builtin]}
    return gzip.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), mtime=0)
