"""`provision service install|uninstall`: the systemd unit that runs `provision watch MANIFEST`.

The unit itself, and writing or removing it, is runtime/service.py; this module picks what the command
line leaves open (a --user unit unless root, this interpreter, the state folder as an absolute path) and
turns a missing manifest into one clear error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UsageError
from ..runtime import service
from ..runtime.service import ServiceResult
from ..state import StateDir

__all__ = ["ServiceResult", "install", "uninstall"]


def install(manifest: str | os.PathLike, state_dir: StateDir, *, user: bool | None = None, print_only: bool = False,
            env_file: str | os.PathLike | None = None, run_as: str | None = None, force: bool = False,
            start: bool = True) -> ServiceResult:
    """Write the stack's unit and enable it (or, print_only, only make its text: nothing is written)."""
    path = _manifest(manifest)
    user = os.geteuid() != 0 if user is None else user
    state = Path(os.path.abspath(state_dir.path))
    env = Path(env_file) if env_file is not None else None
    if print_only:
        text = service.unit_text(path, state, python=sys.executable, env_file=env, user=user, run_as=run_as)
        name = service.unit_name(service.read_manifest(path)[0])
        result = ServiceResult(name, service.unit_dir(user) / name, "printed", text=text)
    else:
        result = service.install(path, state, user=user, python=sys.executable, env_file=env, run_as=run_as,
                                 force=force, start=start)
    required = service.read_manifest(path)[1].required
    if env is None and required:
        result.notes.append(f"the manifest needs {', '.join(required)} but the unit has no environment file: "
                            "pass --env-file FILE (NAME=value lines, mode 600)")
    return result


def uninstall(manifest_or_stack: str, *, user: bool | None = None, force: bool = False) -> ServiceResult:
    """Stop, disable and remove the unit of a manifest (its `name`) or of a stack named directly."""
    looks_like_path = os.sep in manifest_or_stack or manifest_or_stack.endswith((".yml", ".yaml"))
    if looks_like_path and not os.path.isfile(manifest_or_stack):
        raise UsageError(f"{manifest_or_stack}: no such manifest",
                         hint="give the manifest the unit was installed from, or the stack's name")
    return service.uninstall(manifest_or_stack, user=user, force=force)


def _manifest(manifest: str | os.PathLike) -> Path:
    path = Path(manifest)
    if not path.is_file():
        raise UsageError(f"{manifest}: no such manifest" if not path.exists() else f"{manifest} is not a file",
                         hint="give the manifest `provision watch` is to keep up")
    return path
