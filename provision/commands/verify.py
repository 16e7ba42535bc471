"""`provision verify`: the RAGFlow-shaped checks on what the state says is up."""

from __future__ import annotations

from dataclasses import dataclass

from .. import auth
from .. import verify as checks
from ..errors import EXIT_FAILED, EXIT_OK
from ..state import State, StateDir


@dataclass
class VerifyResult:
    state: State
    checks: list[checks.CheckResult]
    exit_code: int



def verify(state_dir: StateDir) -> VerifyResult:
    state = state_dir.require()
    running = [m for m in state.models if m.status == "running"]
    if state.server is None or not running:
        results = [checks.not_checked(m, "not running: " + (m.error or m.status)) for m in state.models]
        return VerifyResult(state, results, EXIT_FAILED)
    # The API key, as RAGFlow calls the models (see auth/clients.py).
    results = checks.verify_all(auth.key_client(state_dir, state.server), running)
    results += [checks.not_checked(m, "did not come up: " + (m.error or m.status)) for m in state.models if m.status != "running"]
    return VerifyResult(state, results, EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED)
