"""Fetch model folders through the hub client: skip unchanged folders, check the result, map errors.

    download_all(candidates, spec)        {uid: DownloadResult | HubError}, models in parallel
      download_model(candidate, spec)
        hub: none, or a local_path    ->  local_folder_check: the folder must already hold a model
        hub: modelscope               ->  listing (hub.py) -> unchanged ? skip : modelscope.snapshot_download
        hub: huggingface              ->  huggingface_hub.snapshot_download

A verified download leaves `.provision-download.json` in the folder (per file: the listing's size and
sha256, the local size and mtime_ns). While the listing and every file still match it, the client is
not called at all: it would re-hash every file on every run (about 1 s per GB). Anything else goes to
the client, which skips files whose size and sha256 match and resumes `*.incomplete` partials.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import requests

from . import hub
from .errors import HubError
from .manifest import Candidate, DownloadSpec
from .report import human_bytes

RECORD = ".provision-download.json"
PROGRESS_INTERVAL_S = 0.5
CONFIG_FILES = ("config.json", "modules.json", "config_sentence_transformers.json")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.gguf", "*.pt", "*.pth")
_PARTIAL_SUFFIXES = (".incomplete", ".parallel_tmp")
_IMPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class DownloadResult:
    folder: Path
    files_fetched: int
    bytes_fetched: int
    seconds: float
    skipped: bool  # True: the hub client was not called (unchanged folder, or a local folder)


@dataclass(frozen=True)
class DownloadProgress:
    """One progress event; callbacks may be called from a background thread."""

    uid: str
    state: str  # listing, downloading, done, failed, skipped
    bytes_done: int = 0
    bytes_total: int | None = None  # from the listing; None when unknown
    message: str = ""


ProgressFn = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class _Emit:
    uid: str
    progress: ProgressFn | None

    def __call__(self, state: str, done: int = 0, total: int | None = None, message: str = "") -> None:
        if self.progress is not None:
            self.progress(DownloadProgress(self.uid, state, done, total, message))


# --------------------------------------------------------------------------------------------------
# Public API


def download_all(candidates: Iterable[Candidate], spec: DownloadSpec, *, parallel: int | None = None,
                 progress: ProgressFn | None = None, environ: Mapping[str, str] = os.environ,
                 ) -> dict[str, DownloadResult | HubError]:
    """Download several models at once (one candidate per uid); one model's failure stops no other."""
    candidates = list(candidates)
    uids = [c.uid for c in candidates]
    if len(set(uids)) != len(uids):
        raise ValueError(f"download_all takes one candidate per uid, got {uids}")
    results: dict[str, DownloadResult | HubError] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallel or spec.parallel), thread_name_prefix="download") as pool:
        futures = {c.uid: pool.submit(download_model, c, spec, environ=environ, progress=progress) for c in candidates}
        for uid, future in futures.items():
            try:
                results[uid] = future.result()
            except HubError as exc:
                results[uid] = exc
            except Exception as exc:  # a bug must not hide the other models' results
                error = HubError(f"{uid}: unexpected error while downloading: {exc!r}")
                error.__cause__ = exc
                results[uid] = error
    return results


def download_model(candidate: Candidate, spec: DownloadSpec, *, environ: Mapping[str, str] = os.environ,
                   progress: ProgressFn | None = None) -> DownloadResult:
    """Make `candidate.folder` hold the complete model; raise HubError naming the model and the fix."""
    started = time.monotonic()
    emit = _Emit(candidate.uid, progress)
    try:
        if spec.hub == "none" or not candidate.downloadable:
            folder = local_folder_check(candidate)
            emit("skipped")
            result = DownloadResult(folder, 0, 0, 0.0, skipped=True)
        elif spec.hub == "huggingface":
            result = _download_huggingface(candidate, spec, environ, emit)
        else:
            result = _download_modelscope(candidate, spec, environ, emit)
    except HubError as exc:
        emit("failed", message=exc.message)
        raise
    return replace(result, seconds=time.monotonic() - started)


def local_folder_check(candidate: Candidate) -> Path:
    """The candidate's folder (local_path, or models_dir/source), checked to hold a model. No network."""
    folder, who = candidate.folder, _who(candidate)
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
    names = list(_local_files(folder))
    if not names:
        return "is empty"
    if any(fnmatch(name, "*.gguf") for name in names):
        return None  # a GGUF file carries its own config
    if not any(name in CONFIG_FILES for name in names):
        return "holds no model config (config.json, or modules.json for sentence-transformers)"
    if not any(fnmatch(Path(name).name, pattern) for name in names for pattern in WEIGHT_PATTERNS):
        return "holds no weights (*.safetensors, pytorch_model*.bin, *.gguf, ...)"
    return None


# --------------------------------------------------------------------------------------------------
# The hubs


def _download_modelscope(c: Candidate, spec: DownloadSpec, environ: Mapping[str, str], emit: _Emit) -> DownloadResult:
    endpoint = hub.resolve_endpoint(spec.endpoint, environ)  # passed per call: the client's config is a singleton
    token = environ.get(spec.token_env) or None
    ctx = _Context(c, spec, endpoint or f"{hub.DEFAULT_ENDPOINT} (the default)", token_set=bool(token))
    folder = c.folder
    with _hub_errors(ctx):
        emit("listing")
        files = hub.list_model_files(c.source, c.revision, endpoint=endpoint, token=token)
        if not files:  # e.g. HTTP 200 with Success:false, which the client takes for an empty model
            raise ctx.no_files()
        total = sum(f.size for f in files)
        if _unchanged(folder, c, files):
            emit("skipped", total, total)
            return DownloadResult(folder, 0, 0, 0.0, skipped=True)
        ctx.need = _check_free_space(ctx, files)
        before = _local_files(folder)
        snapshot_download = _modelscope_client()
        with _ProgressWatcher(folder, files, emit):
            snapshot_download(c.source, revision=c.revision, local_dir=str(folder), endpoint=endpoint, token=token)
        result = _finish(ctx, before)
        _write_record(folder, c, files)
    emit("done", total, total)
    return result


def _download_huggingface(c: Candidate, spec: DownloadSpec, environ: Mapping[str, str], emit: _Emit) -> DownloadResult:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise HubError("download.hub: huggingface needs the huggingface_hub package",
                       hint="pip install huggingface_hub, or use hub: modelscope") from exc
    token = environ.get(spec.token_env) or None
    ctx = _Context(c, spec, spec.endpoint or environ.get("HF_ENDPOINT") or "https://huggingface.co", bool(token))
    before = _local_files(c.folder)
    emit("downloading")
    with _hub_errors(ctx):
        snapshot_download(c.source, revision=c.revision, local_dir=c.folder, token=token, endpoint=spec.endpoint)
        result = _finish(ctx, before)
    emit("done", result.bytes_fetched, result.bytes_fetched)
    return result


def _modelscope_client():
    """Import the client only when a download needs it (about 1.5 s), once, and keep it quiet."""
    with _IMPORT_LOCK:  # a first import racing in several download threads is fragile
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it once, at import; we show our own progress
        from modelscope import snapshot_download
    # Its failures become our HubErrors, so its own log lines would only repeat them (except with --debug).
    level = logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("modelscope", "modelscope_hub"):
        logging.getLogger(name).setLevel(level)
    return snapshot_download


def _finish(ctx: _Context, before: dict[str, os.stat_result]) -> DownloadResult:
    """Count what changed on disk and check the folder holds a model now."""
    folder = ctx.candidate.folder
    after = _local_files(folder)
    if not after:
        raise ctx.no_files()
    fetched = [p for p, st in after.items() if p not in before or _identity(before[p]) != _identity(st)]
    problem = model_folder_problem(folder)
    if problem:
        raise HubError(
            f"{ctx.who}: {ctx.candidate.source} was downloaded to {folder}, but the folder {problem}",
            hint="check `source`: this repo may not be the model itself (e.g. a README-only or code-only repo)",
        )
    return DownloadResult(folder, len(fetched), sum(after[p].st_size for p in fetched), 0.0, skipped=False)


# --------------------------------------------------------------------------------------------------
# The folder: its files, the record of the last verified download, free space, progress


def _local_files(folder: Path | None) -> dict[str, os.stat_result]:
    """Repo-relative path -> stat of every file, leaving out hidden entries and partial downloads."""
    found: dict[str, os.stat_result] = {}
    if folder is None or not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and not name.endswith(_PARTIAL_SUFFIXES):
                path = Path(dirpath, name)
                try:
                    found[path.relative_to(folder).as_posix()] = path.stat()
                except OSError:
                    continue  # vanished while we looked
    return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _unchanged(folder: Path, c: Candidate, files: list[hub.RepoFile]) -> bool:
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
            if _identity((folder / f.path).stat()) != (entry["size"], entry["mtime_ns"]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _write_record(folder: Path, c: Candidate, files: list[hub.RepoFile]) -> None:
    entries = {}
    for f in files:
        st = (folder / f.path).stat()
        entries[f.path] = {"listed_size": f.size, "sha256": f.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = folder / f"{RECORD}.{os.getpid()}.{threading.get_ident()}.tmp"  # two candidates may share a folder
    tmp.write_text(json.dumps({"source": c.source, "revision": c.revision, "files": entries}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / RECORD)


def _check_free_space(ctx: _Context, files: list[hub.RepoFile]) -> int:
    """Bytes still to fetch; HubError now, rather than a full disk halfway, when they do not fit."""
    folder = ctx.candidate.folder
    present = _local_files(folder)
    need = sum(max(0, f.size - _size(folder / (f.path + ".incomplete"))) for f in files
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


class _ProgressWatcher:
    """Reports the folder's growth (finished files + `*.incomplete` partials) against the listing total
    from a small thread: the client has no byte-progress hook we want to depend on."""

    def __init__(self, folder: Path, files: list[hub.RepoFile], emit: _Emit):
        self.folder, self.files, self.emit = folder, files, emit
        self.total = sum(f.size for f in files)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download-progress-{emit.uid}", daemon=True)

    def bytes_done(self) -> int:
        done = 0
        for f in self.files:
            path = self.folder / f.path
            done += f.size if _size(path) == f.size else _size(path.with_name(path.name + ".incomplete"))
        return min(done, self.total)

    def _run(self) -> None:
        last = None
        while True:
            if (done := self.bytes_done()) != last:
                self.emit("downloading", done, self.total)
                last = done
            if self._stop.wait(PROGRESS_INTERVAL_S):
                return

    def __enter__(self) -> _ProgressWatcher:
        if self.emit.progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# Errors: every library exception becomes one HubError that names the model and says what to do


@dataclass
class _Context:
    candidate: Candidate
    spec: DownloadSpec
    where: str  # the hub's address, for messages
    token_set: bool
    need: int | None = None  # bytes still to fetch, once known

    @property
    def who(self) -> str:
        return f"{_who(self.candidate)} from {self.candidate.source}"

    def no_files(self) -> HubError:
        return HubError(
            f"{self.who}: the hub returned no files for {self.candidate.source} (at {self.where})",
            hint="the hub answered without an error but listed nothing (e.g. Success:false): check `source` "
            "and `revision`, and that download.endpoint is a ModelScope API",
        )


def _who(c: Candidate) -> str:
    label = "" if c.position == 0 else f", {c.label}"
    return f"model {c.uid} ({c.role}{label})"


@contextmanager
def _hub_errors(ctx: _Context) -> Iterator[None]:
    try:
        yield
    except HubError:
        raise
    except Exception as exc:
        error = _translate(exc, ctx)
        if error is None:
            raise
        raise error from exc


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(errors: list[BaseException]) -> int | None:
    for e in errors:
        code = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _translate(exc: Exception, ctx: _Context) -> HubError | None:
    c, who, where = ctx.candidate, ctx.who, ctx.where
    ms = sys.modules.get("modelscope_hub.errors")  # loaded if the exception can come from it
    failed: dict = getattr(exc, "failed_files", None) or {}
    errors = list(_chain(exc)) + [e for inner in failed.values() for e in _chain(inner)]
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    if failed:
        path, first = next(iter(failed.items()))
        detail = f"{path}: {(str(first).strip().splitlines() or [type(first).__name__])[0]}"
    status = _status(errors)

    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors):
        need = f"; the download needs {human_bytes(ctx.need)}" if ctx.need else ""
        return HubError(f"{who}: the disk filled up while downloading into {c.folder}{need}",
                        hint="free space in download.models_dir (or point it at a bigger disk) and run again: "
                        "finished files are kept and partial ones resume")
    if ms and any(isinstance(e, ms.FileIntegrityError) for e in errors):
        return HubError(f"{who}: a file does not match the hub's listing ({detail})",
                        hint=f"the mirror's file differs from its listing (size or sha256): re-sync the mirror at "
                        f"{where}, or download from the official hub")
    if status in (401, 403):
        env = ctx.spec.token_env
        hint = (f"the token in {env} was refused or has no access to {c.source}: check it on the hub" if ctx.token_set
                else f"set the token in the environment variable {env} (download.token_env)")
        return HubError(f"{who}: the hub at {where} answered HTTP {status} (not authorized)", hint=hint)
    if status == 404 and failed:
        return HubError(f"{who}: the hub lists a file it does not serve ({detail})",
                        hint=f"the mirror at {where} is incomplete: re-sync it")
    if status == 404:
        return HubError(f"{who}: {c.source} (revision {c.revision or 'master'}) was not found at {where}",
                        hint="check `source` (the hub id, owner/name) and `revision`")
    if status == 429:
        return HubError(f"{who}: the hub at {where} is rate limiting requests (HTTP 429)", hint="wait and run again")
    unreachable = "check download.endpoint and the network (proxy, firewall); offline, set `download.hub: none` and use local folders"
    if status is not None and status >= 500:
        return HubError(f"{who}: the hub at {where} failed with HTTP {status}; it is unreachable or broken",
                        hint=f"try again later, or {unreachable}")
    if any(isinstance(e, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout))
           or "Connect" in type(e).__name__ or "Timeout" in type(e).__name__ for e in errors):
        reason = re.search(r"\[Errno -?\d+\] [^\"')\n]+", detail)  # urllib3's text buries it
        return HubError(f"{who}: the hub at {where} is unreachable ({reason[0] if reason else detail})", hint=unreachable)
    if isinstance(exc, requests.JSONDecodeError):
        return HubError(f"{who}: {where} did not answer like a ModelScope hub (not JSON)",
                        hint="check download.endpoint: it must be the hub's base URL, e.g. http://mirror:8080")
    if isinstance(exc, OSError) and exc.errno is not None:
        return HubError(f"{who}: cannot write {c.folder}: {exc.strerror or exc}",
                        hint="check that download.models_dir is writable")
    if isinstance(exc, requests.RequestException) or (ms and isinstance(exc, ms.HubError)):
        return HubError(f"{who}: downloading {c.source} from {where} failed ({detail})",
                        hint="run again: finished files are kept and partial ones resume")
    return None
