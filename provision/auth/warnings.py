"""Security warnings of `validate`, `plan` and `up`: the manifest's (an open API, secrets written into it)
and the state folder's (credentials readable by other users)."""

from __future__ import annotations

import stat

from ..manifest import Manifest, manifest_warnings
from ..state import StateDir
from .credentials import credentials_path


def security_warnings(manifest: Manifest, state_dir: StateDir | None = None) -> list[str]:
    return manifest_warnings(manifest) + (state_folder_warnings(state_dir) if state_dir is not None else [])


def state_folder_warnings(state_dir: StateDir) -> list[str]:
    """The state folder and its secret files must not be readable by other users."""
    warnings = []
    paths = [state_dir.path, credentials_path(state_dir), state_dir.ragflow_dir,
             state_dir.ragflow_dir / "provider.json", state_dir.ragflow_dir / "service_conf.user_default_llm.yaml"]
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and (path == state_dir.path or not stat.S_ISDIR(info.st_mode)):
            fix = "700" if stat.S_ISDIR(info.st_mode) else "600"
            warnings.append(f"{path} is open to other users (mode {mode:o}) and holds or will hold credentials: "
                            f"chmod {fix} {path}")
    return warnings

