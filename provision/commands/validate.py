"""`provision validate`: each manifest's structure, then every candidate against Xinference's catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..auth import security_warnings
from ..errors import ManifestError
from ..manifest import Manifest, load
from ..manifest.catalog import apply_catalog
from ..observe import catalog_for
from ..state import StateDir


@dataclass
class Validated:
    file: str
    manifest: Manifest | None = None
    error: ManifestError | None = None
    warnings: list[str] = field(default_factory=list)
    catalog: str = ""  # where the catalog came from

    @property
    def valid(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "valid": False, "problems": [p.to_json() for p in self.error.problems],
                    "catalog": self.catalog}
        m = self.manifest
        return {"file": self.file, "valid": True, "name": m.name, "models": len(m.models), "warnings": self.warnings,
                "catalog": self.catalog}


def validate(path: str, state_dir: StateDir) -> Validated:
    try:
        manifest = load(path)
    except ManifestError as exc:
        return Validated(path, error=exc)
    try:
        previous = state_dir.read()
    except Exception:  # noqa: BLE001 - a damaged state folder says nothing about the manifest
        previous = None
    catalog = catalog_for(manifest, state_dir, previous)
    try:
        notes = apply_catalog(manifest, catalog)
    except ManifestError as exc:
        return Validated(path, manifest, error=exc, catalog=catalog.source)
    return Validated(path, manifest, warnings=notes + security_warnings(manifest, state_dir), catalog=catalog.source)
