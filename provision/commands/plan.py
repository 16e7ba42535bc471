"""`provision plan`: what `up` would do, per model and candidate, and why; touches nothing."""

from __future__ import annotations

from ..auth import security_warnings
from ..manifest import load
from ..observe import observe
from ..plan import Plan, make_plan
from ..state import StateDir


def plan(manifest_path: str, state_dir: StateDir) -> Plan:
    manifest = load(manifest_path)
    result = make_plan(manifest, observe(manifest, state_dir.read(), state_dir, hub_listing=True))
    result.warnings += security_warnings(manifest, state_dir)
    return result
