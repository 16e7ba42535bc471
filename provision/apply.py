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

from . import auth, download, launch, ragflow, server, verify
from .observe import observe
from .errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ProvisionError, ServerError
from .manifest import Candidate, Manifest, load
from .plan import KEEP, RELAUNCH, TERMINATE, Plan, launchable, make_plan
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


def plan_only(manifest_path: str, state_dir: StateDir) -> Plan:
    manifest = load(manifest_path)
    plan = make_plan(manifest, observe(manifest, state_dir.read(), state_dir, hub_listing=True))
    plan.warnings += auth.security_warnings(manifest, state_dir, exposure=False)  # plan.py warns on exposure
    return plan


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
        self.client: XinferenceClient | None = None  # manages models: the admin's login where auth is on
        self.key_client: XinferenceClient | None = None  # calls models as RAGFlow does: the API key
        self.api_key: str | None = None  # for provider.json; never printed
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
        plan = make_plan(manifest, observe(manifest, previous, state_dir))
        plan.warnings += auth.security_warnings(manifest, state_dir, exposure=False)  # plan.py warns on exposure
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
    checks = verify.verify_all(run.key_client, running)
    run.stage_seconds["verify"] = time.monotonic() - started
    for check in checks:
        console.line(f"[verify] {check.role} {check.uid}: ok ({check.detail})" if check.ok else f"[verify] FAILED {check.message}")

    provider, files, paste = None, {}, ""
    if running:
        # provider.json (0600) holds the key, as RAGFlow needs it; what is shown and --json hide it.
        provider = ragflow.redacted(ragflow.build_provider(run.state, run.api_key))
        files = {name: str(path) for name, path in ragflow.write_config(run.state_dir, run.state, run.api_key).items()}
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
        spec = manifest.server
        if plan.server in ("start", "restart") and spec.mode == "cluster":
            console.line(f"[server] starting xinference-supervisor on {spec.host}:{spec.port} and {spec.workers} "
                         f"worker{'s' if spec.workers != 1 else ''} ({', '.join(spec.worker_addresses)})")
            run.state_dir.ensure()
            record = server.start_cluster(
                spec,
                home=manifest.server_home,
                logs=run.state_dir.logs,
                hub=manifest.download.hub,
                on_event=lambda text: console.line(f"[server] {text}"),
                on_started=lambda rec: _record_server(run, rec),
                on_progress=lambda waited: console.progress("server", f"[server] waiting for the API ({waited:.0f}s)"),
            )
            record.auth = spec.auth
            _record_server(run, record)
            console.line(f"[server] supervisor ready at {record.url} in {seconds(time.monotonic() - started)} "
                         f"(pid {record.pid}); workers started (pids {', '.join(str(w.pid) for w in record.workers)})")
        elif plan.server in ("start", "restart"):
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
            record.auth = manifest.server.auth
            _record_server(run, record)
            console.line(f"[server] ready at {record.url} in {seconds(time.monotonic() - started)} (pid {record.pid})")
        elif plan.server == "reuse":
            console.line(f"[server] reusing {run.state.server.url} (pid {run.state.server.pid})")
        else:
            _record_server(run, ServerRecord(url=plan.base_url, managed=False, **auth.server_record_fields(manifest)))
            if XinferenceClient(plan.base_url).answers() is None:
                raise ServerError(
                    f"the server at {plan.base_url} (server.endpoint) does not answer",
                    hint="check the address and that the server is running",
                )
            console.line(f"[server] using the existing server at {plan.base_url}")
        record = run.state.server
        if record.managed and record.auth:
            auth.ensure_credentials(record.url, record.home or manifest.server_home, record.log, run.state_dir,
                                    on_event=lambda text: console.line(f"[server] {text}"))
        run.api_key = auth.api_key_for(run.state_dir, record)
        run.key_client = auth.key_client(run.state_dir, record)
        run.client = auth.admin_client(run.state_dir, record)
        if record.managed and record.workers and plan.server in ("start", "restart"):
            waited = time.monotonic()
            listed = server.wait_for_workers(
                record, run.client, timeout=spec.start_timeout,
                on_progress=lambda w: console.progress("server", f"[server] waiting for the workers to join ({w:.0f}s)"),
            )
            console.line(f"[server] workers joined in {seconds(time.monotonic() - waited)}: {', '.join(listed)}")
        if not record.managed:
            run.key_client.list_models()  # a refused key ends `up` here, naming the variable to set
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
    run.server_ready.wait()
    if run.server_error is not None:
        return
    with launch_slots:
        if step.action == RELAUNCH:
            console.line(f"[launch] {step.uid}: terminating the running instance ({step.reason})")
            run.client.terminate(step.uid)
        started = time.monotonic()
        logs = _server_logs(run)
        result = launch.launch_chain(
            run.client,
            candidates,
            resolve_path=resolve,
            log_tail=lambda: "\n".join(server.log_tail(log, 60) for log in logs if log.exists()),
            on_event=lambda text: console.line(f"[launch] {step.role} {step.uid}: {text}"),
        )
        run.add_span("launch", started)
    winner = result.winner
    attempts = chosen.attempts(result.attempts)
    record = ModelRecord(
        role=step.role,
        uid=step.uid,
        model_type=every_candidate[0].model_type,
        status="running" if winner else "failed",
        candidate=winner.label if winner else None,
        name=winner.name if winner else None,
        engine=winner.engine if winner else None,
        spec=result.payload or {},
        chain_key=step.chain_key,
        folder=str(winner.folder) if winner and winner.folder else None,
        attempts=attempts,
        error=None if winner else launch.summarize_failure(step.uid, attempts, len(every_candidate)),
        launched_at=time.time(),
        ready_seconds=result.ready_seconds,
    )
    if winner:
        _read_model_facts(run.client, record)
    run.put_model(record)


def _server_logs(run: _Run) -> list[Path]:
    """Where a failed launch's real cause is logged: the server, and in a cluster the workers, which load
    the models."""
    record = run.state.server
    logs = [run.state_dir.logs / "server.log"]
    if record is not None:
        logs += [Path(worker.log) for worker in record.workers if worker.log]
    return logs


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
