"""`provision down`: terminate the models `up` launched, then stop the server it started; nothing else."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import auth
from ..console import Console
from ..errors import EXIT_FAILED, EXIT_OK, ProvisionError
from ..plan.model import ON_SERVER
from ..runtime import procs, server
from ..state import StateDir


@dataclass
class DownResult:
    terminated: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    server: str = "nothing to stop"
    exit_code: int = EXIT_OK
    errors: list[str] = field(default_factory=list)


def down(state_dir: StateDir, console: Console | None = None) -> DownResult:
    console = console or Console()
    result = DownResult()
    if not state_dir.exists():
        result.server = f"nothing recorded in {state_dir.path}"
        return result
    with state_dir.lock("down"):
        state = state_dir.read()  # under the lock: an `up` that finished a moment ago wrote its server
        if state is None:
            result.server = f"nothing recorded in {state_dir.path}"
            return result
        record = state.server
        reachable = record is not None and (not record.managed or procs.is_same_process(record))
        if reachable:
            try:  # terminating models takes the admin's login where auth is on
                client, why = auth.admin_client(state_dir, record), None
            except ProvisionError as exc:
                client, why = None, exc
            for model in state.models:
                if model.status not in ON_SERVER:  # `launching`: an interrupted `up` asked for it
                    continue
                try:
                    if client is None:
                        raise why
                    gone = not client.terminate(model.uid)
                except ProvisionError as exc:
                    if record.managed:  # the server is stopped next, which ends the model too
                        console.line(f"[down] {model.uid}: terminate failed ({exc.message}); stopping the server ends it")
                    else:
                        result.errors.append(f"{model.uid}: {exc.message}")
                        continue
                    gone = False
                (result.already_gone if gone else result.terminated).append(model.uid)
                model.status = "terminated"
                console.line(f"[down] {model.uid}: {'already gone' if gone else 'terminated'}")
        else:
            for model in state.models:
                if model.status in ON_SERVER:
                    model.status = "terminated"
                    result.already_gone.append(model.uid)
        if record is not None and record.managed:
            started = time.monotonic()
            result.server = server.stop_server(record)
            console.line(f"[down] server: {result.server} ({time.monotonic() - started:.1f}s)")
            state.server = None
        elif record is not None:
            result.server = f"left running (external server {record.url})"
        state_dir.write(state)
    result.exit_code = EXIT_FAILED if result.errors else EXIT_OK
    return result
