"""A model folder on disk: its files, whether it holds a model, the record of the last verified download,
and the free space a download needs.

A verified download leaves `.provision-download.json` in the folder (per file: the listing's size and
sha256, the local size and mtime_ns). While the listing and every file still match it, the hub client is
not called at all: it would re-hash every file on every run (about 1 s per GB).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from ..errors import HubError
from ..manifest import Candidate
from ..modelfiles import folder_problem, is_hidden
from ..report import human_bytes
from . import hub

from .errors import HubContext, who_of

RECORD = ".provision-download.json"


def local_folder_check(candidate: Candidate) -> Path:
    """The candidate's folder (local_path, or models_dir/source), checked to hold a model. No network."""
    folder, who = candidate.folder, who_of(candidate)
    if folder is None:
        raise HubError(f"{who} has no folder", hint="set `local_path`, or `source` (a folder under download.models_dir)")
    if not folder.is_dir():
        how = f"copy the model files into {folder}"
        if candidate.source:
            how += f" (e.g. `modelscope download --model {candidate.source} --local_dir {folder}` where the hub is reachable)"
        raise HubError(f"{who}: the folder {folder} does not exist", hint=f"nothing is downloaded for it: {how}")
    problem = model_folder_problem(folder)
    if problem:
        raise HubError(f"{who}: the folder {folder} {problem}", hint=f"copy the complete model into {folder}")
    return folder


def model_folder_problem(folder: Path) -> str | None:
    """Why `folder` does not hold a loadable model (config + weights), or None when it does."""
    return folder_problem(model_files(folder))


def model_files(folder: Path) -> dict[str, int]:
    """The files that make a model in `folder` (relative path -> size): its top level only, plus the module
    folders a sentence-transformers `modules.json` lists. A model's config and weights sit there, and
    `local_path: /data` must not walk all of /data."""
    found = _file_sizes(folder, "")
    if "modules.json" in found:  # sentence-transformers: the weights may sit in the module folders it lists
        try:
            modules = json.loads((folder / "modules.json").read_text())
        except (OSError, ValueError):
            modules = []
        for module in modules if isinstance(modules, list) else []:
            sub = str(module.get("path") or "") if isinstance(module, dict) else ""
            if sub and ".." not in sub.split("/") and not sub.startswith("/"):
                found.update(_file_sizes(folder / sub, sub.rstrip("/") + "/"))
    return found


def _file_sizes(folder: Path, prefix: str) -> dict[str, int]:
    found = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or is_hidden(entry.name):
                    continue
                try:
                    if entry.is_file():
                        found[prefix + entry.name] = entry.stat().st_size
                except OSError:
                    continue  # vanished while we looked
    except OSError:
        pass
    return found



def local_files(folder: Path | None) -> dict[str, os.stat_result]:
    """Repo-relative path -> stat of every file, leaving out hidden entries and partial downloads."""
    found: dict[str, os.stat_result] = {}
    if folder is None or not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not is_hidden(name):
                path = Path(dirpath, name)
                try:
                    found[path.relative_to(folder).as_posix()] = path.stat()
                except OSError:
                    continue  # vanished while we looked
    return found


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def unchanged(folder: Path, c: Candidate, files: list[hub.RepoFile]) -> bool:
    """True when the last verified download had this exact listing and no listed file changed since."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        recorded = record["files"] if record.get("source") == c.source else {}
        if set(recorded) != {f.path for f in files}:
            return False
        for f in files:
            entry = recorded[f.path]
            if (entry["listed_size"], entry["sha256"]) != (f.size, f.sha256):
                return False
            if identity((folder / f.path).stat()) != (entry["size"], entry["mtime_ns"]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def write_record(folder: Path, c: Candidate, files: list[hub.RepoFile]) -> None:
    entries = {}
    for f in files:
        st = (folder / f.path).stat()
        entries[f.path] = {"listed_size": f.size, "sha256": f.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = folder / f"{RECORD}.{os.getpid()}.{threading.get_ident()}.tmp"  # two candidates may share a folder
    tmp.write_text(json.dumps({"source": c.source, "revision": c.revision, "files": entries}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / RECORD)


def forget_record(folder: Path) -> None:
    """Trust the folder no more: the next download checks every file against the hub."""
    try:
        (folder / RECORD).unlink()
    except FileNotFoundError:
        pass


def check_free_space(ctx: HubContext, files: list[hub.RepoFile]) -> int:
    """Bytes still to fetch; HubError now, rather than a full disk halfway, when they do not fit."""
    folder = ctx.candidate.folder
    present = local_files(folder)
    need = sum(max(0, f.size - file_size(folder / (f.path + ".incomplete"))) for f in files
               if f.path not in present or present[f.path].st_size != f.size)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise HubError(
            f"{ctx.who}: not enough disk space for {ctx.candidate.source}: it needs {human_bytes(need)} "
            f"more in {folder}, {human_bytes(free)} free",
            hint=f"free {human_bytes(need - free)} or more on that disk, or set download.models_dir to a bigger one",
        )
    return need

