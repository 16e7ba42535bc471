"""`provision plan`: what `up` would do, per model and candidate, and why; touches nothing."""

from __future__ import annotations

from ..auth import security_warnings
from ..manifest import load
from ..manifest.catalog import apply_catalog
from ..observe import catalog_for, observe
from ..plan import Plan, make_plan
from ..ragflow.register import plan_warnings
from ..state import StateDir


def plan(manifest_path: str, state_dir: StateDir) -> Plan:
    manifest = load(manifest_path)
    previous = state_dir.read()
    catalog = catalog_for(manifest, state_dir, previous)
    notes = apply_catalog(manifest, catalog)
    result = make_plan(manifest, observe(manifest, previous, state_dir, hub_listing=True))
    result.catalog = catalog.source
    result.warnings += notes + security_warnings(manifest, state_dir) + plan_warnings(manifest)
    return result
