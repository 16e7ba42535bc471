"""`up`'s per-model stage: fetch the first candidate's weights while the server starts, then walk the
model's fallback chain as soon as the server answers, and record the outcome."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from .. import download, launch
from ..catalog import weights
from ..launch.chain import PENDING
from ..download import DownloadProgress
from ..download.folder import forget_record
from ..errors import ProvisionError, XinferenceError
from ..manifest import Candidate
from ..plan import RELAUNCH, ModelStep, Plan
from ..report import human_bytes, seconds
from ..runtime.logs import log_tail
from ..state import AttemptRecord, ModelRecord
from ..xinference import XinferenceClient
from .run import UpRun


@dataclass
class Launchable:
    """The candidates `up` tries, in chain order, and the ones the plan skipped as attempt records."""

    candidates: list[Candidate]
    skipped: list[AttemptRecord]
    total: int  # the chain's length

    def attempts(self, tried: list[AttemptRecord]) -> list[AttemptRecord]:
        """The skipped and the tried attempts together, in chain order."""
        order = {label: i for i, label in enumerate(["primary"] + [f"fallback {n}" for n in range(1, self.total)])}
        return sorted(self.skipped + list(tried), key=lambda a: order.get(a.candidate, self.total))


def launchable(step: ModelStep, candidates: list[Candidate]) -> Launchable:
    """What `up` tries for a model: `auto` resolved, the plan's placement sent, skipped candidates left out.

    Pure: reads only the step the plan made from the same candidates.
    """
    tried, skipped = [], []
    for candidate, cs in zip(candidates, step.candidates):
        if cs.skip_reason:
            skipped.append(AttemptRecord(candidate=candidate.label, name=candidate.name, engine=candidate.engine,
                                         outcome="skipped", reason=cs.skip_reason, kind=cs.skip_kind or ""))
            continue
        changes: dict[str, Any] = {}
        if candidate.is_vllm and candidate.gpu_memory_utilization == "auto":
            changes["gpu_memory_utilization"] = cs.gpu_memory_utilization or candidate.gpu_share()[0]
        if cs.placed_by_plan and cs.gpu_idx is not None:
            changes["gpu_idx"] = cs.gpu_idx
            if cs.worker_ip:
                changes["worker_ip"] = cs.worker_ip
        tried.append(replace(candidate, **changes) if changes else candidate)
    return Launchable(tried, skipped, len(candidates))


def bring_up(run: UpRun, plan: Plan, index: int, launch_slots: threading.Semaphore) -> None:
    """One model: fetch the primary's weights, wait for the server, walk the fallback chain."""
    manifest, console = run.manifest, run.console
    step = plan.steps[index]
    every_candidate = manifest.candidates(index)
    # The plan already ruled some candidates out (no GPU, does not fit, engine not usable): they are
    # recorded as skipped attempts, with the plan's numbers, and never fetched or launched.
    chosen = launchable(step, every_candidate)
    for skipped in chosen.skipped:
        console.line(f"[launch] {step.role} {step.uid}: {skipped.candidate} {skipped.name} on {skipped.engine}: skipped: {skipped.reason}")
    if not chosen.candidates:
        run.put_model(ModelRecord(
            role=step.role, uid=step.uid, model_type=every_candidate[0].model_type, status="failed",
            chain_key=step.chain_key, attempts=chosen.skipped,
            error=launch.summarize_failure(step.uid, chosen.skipped, len(every_candidate)),
        ))
        return
    candidates = chosen.candidates
    folders: dict[tuple, Path | ProvisionError] = {}

    def resolve(candidate: Candidate) -> Path | None:
        # Weights are fetched once per folder (fallbacks often share the primary's), and only when the
        # chain reaches a candidate that needs them.
        key = (candidate.folder, candidate.source, candidate.revision)
        if key not in folders:
            folders[key] = _fetch(run, candidate)
        found = folders[key]
        if isinstance(found, ProvisionError):
            raise found
        return found

    # The primary's weights are fetched while the server starts; its errors surface in the chain.
    started = time.monotonic()
    try:
        resolve(candidates[0])
    except ProvisionError:
        pass
    run.add_span("download", started)
    while not run.server_ready.wait(0.2):
        run.check_stop()
    if run.server_error is not None:
        return
    with _slot(run, launch_slots):
        try:
            if step.action == RELAUNCH:
                console.line(f"[launch] {step.uid}: terminating the running instance ({step.reason})")
                _clear_instance(run, step.uid, candidates[0].launch_timeout)
            elif step.clear_first and _clear_instance(run, step.uid, candidates[0].launch_timeout):
                console.line(f"[launch] {step.uid}: terminated what was left of its instance on the server")
        except ProvisionError as exc:
            run.put_model(ModelRecord(
                role=step.role, uid=step.uid, model_type=every_candidate[0].model_type, status="failed",
                chain_key=step.chain_key, attempts=chosen.skipped,
                error=f"{step.uid}: its instance on the server could not be terminated before the launch: {exc.message}"))
            return
        started = time.monotonic()
        logs = _server_logs(run)
        result = launch.launch_chain(
            run.client,
            candidates,
            resolve_path=resolve,
            log_tail=lambda: "\n".join(log_tail(log, 60) for log in logs if log.exists()),
            on_event=lambda event: _show_launch(console, step, event),
            on_launch=lambda candidate, payload: _record_launching(run, step, candidate, payload),
            vet=lambda candidate, path: _vet_weights(run, candidate, path),
            sleep=run.sleep,
        )
        run.add_span("launch", started)
    winner = result.winner
    attempts = chosen.attempts(result.attempts)
    for attempt in result.attempts:
        damaged = next((c for c in candidates if c.label == attempt.candidate), None)
        if attempt.kind == "damaged_weights" and damaged is not None and damaged.folder is not None:
            forget_record(damaged.folder)  # the next `up` checks these weights against the hub
    record = ModelRecord(
        role=step.role,
        uid=step.uid,
        model_type=every_candidate[0].model_type,
        status="running" if winner else "failed",
        candidate=winner.label if winner else None,
        name=winner.name if winner else None,
        engine=winner.engine if winner else None,
        payload=result.payload or {},
        chain_key=step.chain_key,
        folder=str(winner.folder) if winner and winner.folder else None,
        attempts=attempts,
        error=None if winner else launch.summarize_failure(step.uid, attempts, len(every_candidate)),
        launched_at=time.time(),
        ready_seconds=result.ready_seconds,
    )
    if winner:
        _read_model_facts(run.client, record, run.manifest._catalog)
    run.put_model(record)


def _clear_instance(run: UpRun, uid: str, within: float) -> bool:
    """Terminate the server's instance of `uid` (True) or find none (False). An instance still being launched
    (by an `up` that was interrupted, or by Xinference restarting a replica whose process died) cannot be
    deleted yet: wait for it, within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if run.client.terminate(uid):
                return True
            if not any(i.get("model_uid") in (uid, None) and str(i.get("status") or "").upper() in PENDING
                       for i in run.client.instances(uid) if isinstance(i, dict)):
                return False
        except XinferenceError as exc:
            if exc.status != 400 or "launching" not in exc.detail.lower():
                raise
        if time.monotonic() >= deadline:
            raise XinferenceError(f"{uid} is still being launched on the server after {within:g} s",
                                  hint="wait for it, or `provision down` and `provision up` again")
        run.sleep(2.0)


@contextmanager
def _slot(run: UpRun, slots: threading.Semaphore) -> Iterator[None]:
    """Hold one of `slots`; waiting for it ends when `up` is told to stop."""
    while not slots.acquire(timeout=0.2):
        run.check_stop()
    try:
        yield
    finally:
        slots.release()


def _vet_weights(run: UpRun, candidate: Candidate, folder: Path | None) -> launch.Failure | None:
    """Weights whose config contradicts the catalog entry of the name are not launched (unless accepted)."""
    found = weights.verdict(run.manifest._catalog, candidate.model_type, candidate.name, folder)
    if found is None or candidate.accept_weights_mismatch:
        return None
    return launch.Failure(launch.FailureKind.WEIGHTS_MISMATCH, launch.Scope.CANDIDATE, *found)


def _record_launching(run: UpRun, step: ModelStep, candidate: Candidate, payload: dict) -> None:
    """The launch is asked for: from now on the state says so, so a `down` after a killed `up` finds it."""
    previous = run.state.model(step.uid)
    run.put_model(ModelRecord(
        role=step.role, uid=step.uid, model_type=candidate.model_type, status="launching", candidate=candidate.label,
        name=candidate.name, engine=candidate.engine, payload=payload, chain_key=step.chain_key,
        folder=str(candidate.folder) if candidate.folder else None, launched_at=time.time(),
        attempts=previous.attempts if previous else []))


def _show_launch(console, step: ModelStep, event: launch.LaunchEvent) -> None:
    """Progress of a launch on the model's own live line; everything else as an event line."""
    text = f"[launch] {step.role} {step.uid}: {event}"
    if event.kind == "progress":
        console.progress(step.uid, text)
    else:
        console.done(step.uid)
        console.line(text)


def _server_logs(run: UpRun) -> list[Path]:
    """Where a failed launch's real cause is logged: the server, and in a cluster the workers, which load
    the models."""
    record = run.state.server
    logs = [run.state_dir.logs / "server.log"]
    if record is not None:
        logs += [Path(worker.log) for worker in record.workers if worker.log]
    return logs


def _fetch(run: UpRun, candidate: Candidate) -> Path | ProvisionError:
    with _slot(run, run.download_slots):  # download.parallel at a time
        return _fetch_now(run, candidate)


def _fetch_now(run: UpRun, candidate: Candidate) -> Path | ProvisionError:
    console = run.console
    try:
        result = download.download_model(
            candidate,
            run.manifest.download,
            verify=candidate.uid in run.refetch,
            progress=lambda event: console.progress(candidate.uid, f"[download] {_progress_text(event)}"),
        )
        console.done(candidate.uid)
        if candidate.downloadable:
            what = "up to date" if result.files_fetched == 0 else (
                f"{result.files_fetched} files, {human_bytes(result.bytes_fetched)}"
            )
            console.line(f"[download] {candidate.uid} ({candidate.source}): {what} in {seconds(result.seconds)}")
        return result.folder
    except ProvisionError as exc:
        console.done(candidate.uid)
        console.line(f"[download] {candidate.uid} ({candidate.source}): FAILED {exc.message}")
        return exc


def _progress_text(event: DownloadProgress) -> str:
    if event.state == "listing":
        return f"{event.uid}: listing files"
    if event.bytes_total:
        share = 100 * event.bytes_done / event.bytes_total
        amount = f"{share:.0f}% of {human_bytes(event.bytes_total)}"
    else:
        amount = human_bytes(event.bytes_done)
    return f"{event.uid}: {event.state} {amount} {event.message}".rstrip()


def _read_model_facts(client: XinferenceClient, record: ModelRecord, catalog) -> None:
    """RAGFlow's numbers for the model: max tokens and (embedding) dimensions, as the server reports them,
    else as the catalog has them; never a default. Where each came from is recorded."""
    try:
        described = client.describe(record.uid) or {}
    except ProvisionError:
        described = {}
    family = catalog.family(record.model_type, record.name) if catalog is not None and record.name else None
    listed = {"context_length": family.context_length if record.model_type == "LLM" else family.max_tokens,
              "dimensions": family.dimensions} if family else {}
    live = {"context_length": described.get("context_length") or described.get("max_tokens"),
            "dimensions": described.get("dimensions")}
    for key in ("context_length", "dimensions"):
        if isinstance(live[key], int) and live[key] > 0:
            setattr(record, key, live[key])
            record.numbers_from[key] = f"the server (GET /v1/models/{record.uid})"
        elif isinstance(listed.get(key), int) and listed[key] > 0:
            setattr(record, key, listed[key])
            record.numbers_from[key] = f"the catalog ({catalog.source}): `{record.name}`"
    served = (record.payload or {}).get("max_model_len")
    if record.model_type == "LLM" and isinstance(served, int) and served > 0 and served < (record.context_length or 1 << 62):
        # the model serves what it was launched with, not the family's context: RAGFlow must not ask for more
        was = f" ({record.numbers_from['context_length']} says {record.context_length})" if record.context_length else ""
        record.context_length = served
        record.numbers_from["context_length"] = f"the launch's max_model_len{was}"
