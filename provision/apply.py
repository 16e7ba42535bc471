"""`up`: the only place the stages are sequenced.

    manifest -> observe -> plan -> (download || serve) -> launch chains -> verify -> RAGFlow config -> state

Downloads start at once and the server starts beside them; each model is launched as soon as its
weights are on disk and the server answers, so the slow steps overlap. The state is written after every
step that changes the world, so an interrupted `up` never loses track of a process it started.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import download, launch, ragflow, server, verify
from .errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ProvisionError, ServerError
from .manifest import Candidate, Manifest, load
from .plan import KEEP, RELAUNCH, TERMINATE, Observed, Plan, make_plan, server_url
from .report import Console, human_bytes, seconds
from .state import ModelRecord, ServerRecord, State, StateDir
from .xinference import XinferenceClient

# Launches beyond this wait their turn: each model process imports torch (~20 s of CPU on a small
# machine) and Xinference itself allows 5 concurrent launches.
MAX_PARALLEL_LAUNCHES = max(1, min(3, (os.cpu_count() or 2)))


@dataclass
class UpResult:
    plan: Plan
    state: State
    checks: list[verify.CheckResult]
    provider: dict | None
    files: dict[str, str]
    paste: str
    timings: dict[str, float]
    exit_code: int
    terminated: list[str] = field(default_factory=list)


def observe(manifest: Manifest, previous: State | None) -> Observed:
    """Gather the facts the plan needs: is our old server alive, what does it run, what is on disk."""
    observed = Observed(previous=previous)
    record = previous.server if previous else None
    if manifest.server.endpoint:
        record = ServerRecord(url=manifest.server.endpoint, managed=False)
    if record is not None:
        alive = server.server_alive(record) if record.managed else XinferenceClient(record.url).answers() is not None
        if alive and record.url != server_url(manifest):
            observed.server_moved = record.managed
        elif alive:
            observed.server_reusable = True
            try:
                observed.running_uids = {m.get("id") for m in XinferenceClient(record.url).list_models()}
            except ProvisionError:
                observed.running_uids = set()
    for index in range(len(manifest.models)):
        for candidate in manifest.candidates(index):
            if candidate.folder is not None and download.model_folder_problem(candidate.folder) is None:
                observed.folders_with_model.add(candidate.folder)
    return observed


def plan_only(manifest_path: str, state_dir: StateDir) -> Plan:
    manifest = load(manifest_path)
    return make_plan(manifest, observe(manifest, state_dir.read()))


class _Run:
    """The mutable bits of one `up`, shared by the stage threads; every state write goes through here."""

    def __init__(self, manifest: Manifest, state_dir: StateDir, state: State, console: Console):
        self.manifest = manifest
        self.state_dir = state_dir
        self.state = state
        self.console = console
        self.lock = threading.Lock()
        self.server_ready = threading.Event()
        self.server_error: ProvisionError | None = None
        self.client: XinferenceClient | None = None
        self.previous_server: ServerRecord | None = None
        self.started = time.monotonic()
        self.first_ready: float | None = None
        self.stage_seconds: dict[str, float] = {}
        self.spans: dict[str, tuple[float, float]] = {}

    def save(self) -> None:
        with self.lock:
            self.state_dir.write(self.state)

    def put_model(self, record: ModelRecord) -> None:
        with self.lock:
            self.state.models = [m for m in self.state.models if m.uid != record.uid] + [record]
            if record.status == "running" and self.first_ready is None:
                self.first_ready = time.monotonic() - self.started
            self.state_dir.write(self.state)

    def add_span(self, stage: str, started: float) -> None:
        """Stages overlap across models: a stage's time is the wall-clock span from its first start to
        its last end, not a sum over models."""
        with self.lock:
            first, _ = self.spans.get(stage, (started, started))
            self.spans[stage] = (min(first, started), time.monotonic())
            self.stage_seconds[stage] = self.spans[stage][1] - self.spans[stage][0]


def up(manifest_path: str, state_dir: StateDir, console: Console | None = None) -> UpResult:
    console = console or Console()
    manifest = load(manifest_path)
    with state_dir.lock("up"):
        previous = state_dir.read()
        plan = make_plan(manifest, observe(manifest, previous))
        for warning in plan.warnings:
            console.warn(warning)
        from .render import plan_lines

        for line in plan_lines(plan):
            console.line(line)
        state = State(
            manifest=str(Path(manifest_path).resolve()),
            name=manifest.name,
            server=previous.server if previous and plan.server == "reuse" else None,
            ragflow_docker=manifest.ragflow.docker,
            docker_host=manifest.ragflow.docker_host,
        )
        kept = {s.uid for s in plan.steps if s.action == KEEP}
        if previous:
            state.models = [m for m in previous.models if m.uid in kept]
        run = _Run(manifest, state_dir, state, console)
        run.previous_server = previous.server if previous else None
        try:
            return _apply(run, plan)
        except KeyboardInterrupt:
            run.save()
            console.line(f"interrupted: what was started is recorded in {state_dir.path}; `provision down` stops it")
            raise


def _apply(run: _Run, plan: Plan) -> UpResult:
    manifest, console = run.manifest, run.console
    serve_thread = threading.Thread(target=_serve, args=(run, plan), name="serve", daemon=True)
    serve_thread.start()
    to_launch = [(i, s) for i, s in enumerate(plan.steps) if s.action not in (KEEP, TERMINATE)]
    launch_slots = threading.Semaphore(MAX_PARALLEL_LAUNCHES)
    with ThreadPoolExecutor(max_workers=max(1, len(to_launch)), thread_name_prefix="model") as pool:
        futures = [pool.submit(_bring_up, run, plan, index, launch_slots) for index, _ in to_launch]
        serve_thread.join()
        for future in futures:
            future.result()
    if run.server_error is not None:
        run.save()
        raise run.server_error

    terminated = []
    for step in plan.steps:
        if step.action == TERMINATE:
            console.line(f"[launch] {step.uid}: terminating ({step.reason})")
            run.client.terminate(step.uid)
            terminated.append(step.uid)
    run.save()

    running = [m for m in run.state.models if m.status == "running"]
    if not running and plan.server in ("start", "restart"):
        # Nothing came up: a server started by this run would only be left behind holding the port.
        console.line(f"[server] no model came up; stopping the server this run started: {server.stop_server(run.state.server)}")
        run.state.server = None
        run.save()
    started = time.monotonic()
    checks = verify.verify_all(run.client, running)
    run.stage_seconds["verify"] = time.monotonic() - started
    for check in checks:
        console.line(f"[verify] {check.role} {check.uid}: ok ({check.detail})" if check.ok else f"[verify] FAILED {check.message}")

    provider, files, paste = None, {}, ""
    if running:
        provider = ragflow.build_provider(run.state)
        files = {name: str(path) for name, path in ragflow.write_config(run.state_dir, run.state).items()}
        paste = ragflow.paste_block(provider, docker=manifest.ragflow.docker)
    run.save()

    wanted = [s for s in plan.steps if s.action != TERMINATE]
    good = {c.uid for c in checks if c.ok}
    failed = [s.uid for s in wanted if s.uid not in good]
    exit_code = EXIT_OK if not failed else (EXIT_PARTIAL if good else EXIT_FAILED)
    timings = {"total": time.monotonic() - run.started, **run.stage_seconds}
    if run.first_ready is not None:
        timings["first_ready"] = run.first_ready
    return UpResult(plan, run.state, checks, provider, files, paste, timings, exit_code, terminated)


def _serve(run: _Run, plan: Plan) -> None:
    """Start (or reuse) the server; the launch threads wait on run.server_ready."""
    manifest, console = run.manifest, run.console
    started = time.monotonic()
    try:
        if plan.server == "restart":
            previous = run.previous_server
            console.line(f"[server] stopping the earlier server at {previous.url}: {server.stop_server(previous)}")
        if plan.server in ("start", "restart"):
            console.line(f"[server] starting xinference-local on {manifest.server.host}:{manifest.server.port}")
            run.state_dir.ensure()
            record = server.start_server(
                manifest.server,
                home=manifest.server_home,
                log_path=run.state_dir.logs / "server.log",
                hub=manifest.download.hub,
                on_started=lambda rec: _record_server(run, rec),
                on_progress=lambda waited: console.progress("server", f"[server] waiting for the API ({waited:.0f}s)"),
            )
            _record_server(run, record)
            console.line(f"[server] ready at {record.url} in {seconds(time.monotonic() - started)} (pid {record.pid})")
        elif plan.server == "reuse":
            console.line(f"[server] reusing {run.state.server.url} (pid {run.state.server.pid})")
        else:
            _record_server(run, ServerRecord(url=plan.base_url, managed=False))
            if XinferenceClient(plan.base_url).answers() is None:
                raise ServerError(
                    f"the server at {plan.base_url} (server.endpoint) does not answer",
                    hint="check the address and that the server is running",
                )
            console.line(f"[server] using the existing server at {plan.base_url}")
        run.client = XinferenceClient(run.state.server.url)
    except ProvisionError as exc:
        run.server_error = exc
    finally:
        run.stage_seconds["serve"] = time.monotonic() - started
        run.server_ready.set()


def _record_server(run: _Run, record: ServerRecord) -> None:
    with run.lock:
        run.state.server = record
        run.state_dir.write(run.state)


def _bring_up(run: _Run, plan: Plan, index: int, launch_slots: threading.Semaphore) -> None:
    """One model: fetch the primary's weights, wait for the server, walk the fallback chain."""
    manifest, console = run.manifest, run.console
    step = plan.steps[index]
    candidates = manifest.candidates(index)
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
    run.server_ready.wait()
    if run.server_error is not None:
        return
    with launch_slots:
        if step.action == RELAUNCH:
            console.line(f"[launch] {step.uid}: terminating the running instance ({step.reason})")
            run.client.terminate(step.uid)
        started = time.monotonic()
        log = run.state_dir.logs / "server.log"
        result = launch.launch_chain(
            run.client,
            candidates,
            resolve_path=resolve,
            log_tail=lambda: server.log_tail(log, 60) if log.exists() else "",
            on_event=lambda text: console.line(f"[launch] {step.role} {step.uid}: {text}"),
        )
        run.add_span("launch", started)
    winner = result.winner
    record = ModelRecord(
        role=step.role,
        uid=step.uid,
        model_type=candidates[0].model_type,
        status="running" if winner else "failed",
        candidate=winner.label if winner else None,
        name=winner.name if winner else None,
        engine=winner.engine if winner else None,
        spec=result.payload or {},
        chain_key=step.chain_key,
        folder=str(winner.folder) if winner and winner.folder else None,
        attempts=result.attempts,
        error=result.failure,
        launched_at=time.time(),
        ready_seconds=result.ready_seconds,
    )
    if winner:
        _read_model_facts(run.client, record)
    run.put_model(record)


def _fetch(run: _Run, candidate: Candidate) -> Path | ProvisionError:
    console = run.console
    try:
        result = download.download_model(
            candidate,
            run.manifest.download,
            progress=lambda event: console.progress(candidate.uid, f"[download] {_progress_text(event)}"),
        )
        if candidate.downloadable:
            what = "up to date" if result.files_fetched == 0 else (
                f"{result.files_fetched} files, {human_bytes(result.bytes_fetched)}"
            )
            console.line(f"[download] {candidate.uid} ({candidate.source}): {what} in {seconds(result.seconds)}")
        return result.folder
    except ProvisionError as exc:
        console.line(f"[download] {candidate.uid} ({candidate.source}): FAILED {exc.message}")
        return exc


def _progress_text(event: download.DownloadProgress) -> str:
    if event.state == "listing":
        return f"{event.uid}: listing files"
    if event.bytes_total:
        share = 100 * event.bytes_done / event.bytes_total
        amount = f"{share:.0f}% of {human_bytes(event.bytes_total)}"
    else:
        amount = human_bytes(event.bytes_done)
    return f"{event.uid}: {event.state} {amount} {event.message}".rstrip()


def _read_model_facts(client: XinferenceClient, record: ModelRecord) -> None:
    """Context length / dimensions as Xinference reports them: RAGFlow's max tokens come from here."""
    try:
        described = client.describe(record.uid) or {}
    except ProvisionError:
        return
    record.context_length = described.get("context_length") or described.get("max_tokens")
    record.dimensions = described.get("dimensions")
