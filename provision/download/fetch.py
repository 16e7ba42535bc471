"""Fetch model folders through the hub client: skip unchanged folders, check the result, map errors.

    download_all(candidates, spec)        {uid: DownloadResult | HubError}, models in parallel
      download_model(candidate, spec)
        hub: none, or a local_path    ->  local_folder_check: the folder must already hold a model
        hub: modelscope               ->  listing (hub.py) -> unchanged ? skip : modelscope.snapshot_download
        hub: huggingface              ->  huggingface_hub.snapshot_download

Anything but an unchanged folder goes to the client, which skips files whose size and sha256 match and
resumes `*.incomplete` partials.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .. import redact
from ..errors import HubError
from ..manifest import Candidate, DownloadSpec
from . import hub
from .errors import HubContext, hub_errors
from .folder import check_free_space, forget_record, identity, local_files, local_folder_check, model_folder_problem, unchanged, write_record
from .progress import DownloadProgress, Emit, ProgressWatcher

_IMPORT_LOCK = threading.Lock()

ProgressFn = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class DownloadResult:
    folder: Path
    files_fetched: int
    bytes_fetched: int
    seconds: float
    skipped: bool  # True: the hub client was not called (unchanged folder, or a local folder)



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
                   progress: ProgressFn | None = None, verify: bool = False) -> DownloadResult:
    """Make `candidate.folder` hold the complete model; raise HubError naming the model and the fix.

    `verify`: do not trust the record of the last download; the hub client checks every file's size and
    sha256 against the listing and fetches what differs (damaged weights).
    """
    started = time.monotonic()
    emit = Emit(candidate.uid, progress)
    try:
        if spec.hub == "none" or not candidate.downloadable:
            folder = local_folder_check(candidate)
            emit("skipped")
            result = DownloadResult(folder, 0, 0, 0.0, skipped=True)
        elif spec.hub == "huggingface":
            result = _download_huggingface(candidate, spec, environ, emit)
        else:
            if verify and candidate.folder is not None:
                forget_record(candidate.folder)
            result = _download_modelscope(candidate, spec, environ, emit)
    except HubError as exc:
        emit("failed", message=exc.message)
        raise
    return replace(result, seconds=time.monotonic() - started)


def _download_modelscope(c: Candidate, spec: DownloadSpec, environ: Mapping[str, str], emit: Emit) -> DownloadResult:
    endpoint = hub.resolve_endpoint(spec.endpoint, environ)  # passed per call: the client's config is a singleton
    token = environ.get(spec.token_env) or None
    ctx = HubContext(c, spec, redact.url(endpoint) or f"{hub.DEFAULT_ENDPOINT} (the default)", token_set=bool(token))
    folder = c.folder
    with hub_errors(ctx):
        emit("listing")
        files = hub.list_model_files(c.source, c.revision, endpoint=endpoint, token=token, deadline_s=spec.timeout)
        if not files:  # e.g. HTTP 200 with Success:false, which the client takes for an empty model
            raise ctx.no_files()
        total = sum(f.size for f in files)
        if unchanged(folder, c, files):
            emit("skipped", total, total)
            return DownloadResult(folder, 0, 0, 0.0, skipped=True)
        ctx.need = check_free_space(ctx, files)
        before = local_files(folder)
        snapshot_download = _modelscope_client()
        with ProgressWatcher(folder, files, emit):
            snapshot_download(c.source, revision=c.revision, local_dir=str(folder), endpoint=endpoint, token=token)
        result = _finish(ctx, before)
        write_record(folder, c, files)
    emit("done", total, total)
    return result


def _download_huggingface(c: Candidate, spec: DownloadSpec, environ: Mapping[str, str], emit: Emit) -> DownloadResult:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise HubError("download.hub: huggingface needs the huggingface_hub package",
                       hint="pip install 'provision[huggingface]', or use hub: modelscope") from exc
    token = environ.get(spec.token_env) or None
    ctx = HubContext(c, spec, redact.url(spec.endpoint or environ.get("HF_ENDPOINT") or "https://huggingface.co"),
                     bool(token))
    before = local_files(c.folder)
    emit("downloading")
    with hub_errors(ctx):
        snapshot_download(c.source, revision=c.revision, local_dir=c.folder, token=token, endpoint=spec.endpoint)
        result = _finish(ctx, before)
    emit("done", result.bytes_fetched, result.bytes_fetched)
    return result


def quiet_progress_bars() -> None:
    """The hub clients' tqdm bars off (we show our own progress): tqdm reads TQDM_DISABLE when it is first
    imported. Call it from the main thread before any other starts: changing os.environ while another
    thread copies it is a race."""
    os.environ.setdefault("TQDM_DISABLE", "1")


def _modelscope_client():
    """Import the client only when a download needs it (about 1.5 s), once, and keep it quiet."""
    with _IMPORT_LOCK:  # a first import racing in several download threads is fragile
        from modelscope import snapshot_download
    # Its failures become our HubErrors, so its own log lines would only repeat them (except with --debug).
    level = logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("modelscope", "modelscope_hub"):
        logging.getLogger(name).setLevel(level)
    return snapshot_download


def _finish(ctx: HubContext, before: dict[str, os.stat_result]) -> DownloadResult:
    """Count what changed on disk and check the folder holds a model now."""
    folder = ctx.candidate.folder
    after = local_files(folder)
    if not after:
        raise ctx.no_files()
    fetched = [p for p, st in after.items() if p not in before or identity(before[p]) != identity(st)]
    problem = model_folder_problem(folder)
    if problem:
        raise HubError(
            f"{ctx.who}: {ctx.candidate.source} was downloaded to {folder}, but the folder {problem}",
            hint="check `source`: this repo may not be the model itself (e.g. a README-only or code-only repo)",
        )
    return DownloadResult(folder, len(fetched), sum(after[p].st_size for p in fetched), 0.0, skipped=False)

