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
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from .. import verify
from ..auth import security_warnings
from ..console import Console
from ..download.fetch import quiet_progress_bars
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, UsageError
from ..manifest import load
from ..manifest.catalog import apply_catalog
from ..observe import catalog_for, observe
from ..plan import KEEP, TERMINATE, Plan, make_plan
from ..plan.model import ON_SERVER
from ..ragflow import config as ragflow
from ..render import plan_lines
from ..runtime import server
from ..state import ModelRecord, State, StateDir
from .models import bring_up
from .run import Interrupted, UpResult, UpRun
from .serve import serve


# Launches beyond this wait their turn: each model process imports torch (~20 s of CPU on a small
# machine) and Xinference itself allows 5 concurrent launches.
MAX_PARALLEL_LAUNCHES = max(1, min(3, (os.cpu_count() or 2)))
STOP_GRACE_S = 10.0  # after Ctrl-C/SIGTERM: how long the stage threads get to clean up their launches


def up(manifest_path: str, state_dir: StateDir, console: Console | None = None,
       refetch: Iterable[str] = ()) -> UpResult:
    """Make the manifest true. `refetch`: uids whose weights are checked against the hub and fetched again."""
    console = console or Console()
    manifest = load(manifest_path)
    refetch = set(refetch)
    unknown = sorted(refetch - {m.uid for m in manifest.models})
    if unknown:
        raise UsageError(f"--refetch {', '.join(unknown)}: no such model uid in {manifest_path}",
                         hint=f"uids: {', '.join(m.uid for m in manifest.models)}")
    with state_dir.lock("up"):
        previous = state_dir.read()
        catalog = catalog_for(manifest, state_dir, previous)
        notes = apply_catalog(manifest, catalog)  # every candidate against it; left-out sources come from it
        observed = observe(manifest, previous, state_dir, probe=True)  # kept models are called: READY is no proof
        plan = make_plan(manifest, observed, refetch=refetch)
        plan.catalog = catalog.source
        plan.warnings += notes + security_warnings(manifest, state_dir)
        for warning in plan.warnings:
            console.warn(warning)
        for line in plan_lines(plan):
            console.line(line)
        state = State(
            manifest=str(Path(manifest_path).resolve()),
            name=manifest.name,
            server=previous.server if previous and plan.server == "reuse" else None,
            ragflow_docker=manifest.ragflow.docker,
            docker_host=manifest.ragflow.docker_host,
        )
        state.models = _carried_records(previous, plan)
        run = UpRun(manifest, state_dir, state, console)  # takes the server's environment first
        run.refetch = refetch
        run.probes = {s.uid: observed.probes[s.uid] for s in plan.steps if s.action == KEEP and s.uid in observed.probes}
        quiet_progress_bars()
        run.previous_server = previous.server if previous else None
        try:
            return _apply(run, plan)
        except KeyboardInterrupt:
            run.save()
            console.line(f"interrupted: what was started is recorded in {state_dir.path}; `provision status` shows "
                         "it, `provision down` stops it, `provision up` goes on")
            raise


def _apply(run: UpRun, plan: Plan) -> UpResult:
    manifest, console = run.manifest, run.console
    launch_slots = threading.Semaphore(MAX_PARALLEL_LAUNCHES)
    threads = [_stage(run, "serve", serve, run, plan)]
    threads += [_stage(run, f"model-{step.uid}", bring_up, run, plan, index, launch_slots)
                for index, step in enumerate(plan.steps) if step.action not in (KEEP, TERMINATE)]
    try:
        for thread in threads:
            while thread.is_alive():  # joined in slices: Ctrl-C and SIGTERM reach this thread at once
                thread.join(0.2)
    except KeyboardInterrupt:
        run.stop.set()  # every stage thread's next wait raises; a chain deletes the launch it has in flight
        console.line("interrupted: stopping the launches in progress")
        deadline = time.monotonic() + STOP_GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    if run.crashed:
        raise run.crashed[0]
    if run.server_error is not None:
        run.save()
        raise run.server_error
    terminated = run.terminated
    run.save()

    running = [m for m in run.state.models if m.status == "running"]
    if not running and plan.server in ("start", "restart"):
        # Nothing came up: a server started by this run would only be left behind holding the port.
        console.line(f"[server] no model came up; stopping the server this run started: {server.stop_server(run.state.server)}")
        run.state.server = None
        run.save()
    started = time.monotonic()
    fresh = verify.verify_all(run.key_client, [m for m in running if m.uid not in run.probes])
    by_uid = {**run.probes, **{c.uid: c for c in fresh}}  # kept models were called a moment ago, by observe
    checks = [by_uid[m.uid] for m in running if m.uid in by_uid]
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
    applied, refused = _register_in_ragflow(run) if running else (None, None)

    wanted = [s for s in plan.steps if s.action != TERMINATE]
    good = {c.uid for c in checks if c.ok}
    failed = [s.uid for s in wanted if s.uid not in good]
    exit_code = EXIT_OK if not failed else (EXIT_PARTIAL if good else EXIT_FAILED)
    if exit_code == EXIT_OK and (refused is not None or (applied is not None and not applied.ok)):
        exit_code = EXIT_PARTIAL  # the stack is up; RAGFlow does not have all of it
    timings = {"total": time.monotonic() - run.started, **run.stage_seconds}
    if run.first_ready is not None:
        timings["first_ready"] = run.first_ready
    return UpResult(plan, run.state, checks, provider, files, paste, timings, exit_code, terminated,
                    run.earlier_server, applied, refused)


def _register_in_ragflow(run: UpRun):
    """With ragflow.url (and ragflow.apply not false): the stack registered in RAGFlow, checked from its side.
    (ApplyResult or None, the error that stopped it or None); the stack stays up either way."""
    from ..errors import ProvisionError
    from ..ragflow.register import register, target_for

    settings = run.manifest.ragflow
    target = target_for(settings, run.manifest.name)
    if target is None or not settings.apply:
        return None, None
    started = time.monotonic()
    run.console.line(f"[ragflow] registering the stack in RAGFlow at {target.url} (instance {target.instance!r})")
    try:
        applied = register(run.state_dir, run.state, target)
    except ProvisionError as exc:
        run.console.warn(f"RAGFlow: {exc.render()}")
        return None, exc
    finally:
        run.stage_seconds["ragflow"] = time.monotonic() - started
    for line in applied.lines():
        run.console.line(f"[ragflow] {line}")
    return applied, None


def _stage(run: UpRun, name: str, target, *args) -> threading.Thread:
    """A stage in a thread of its own; an unexpected error is kept for `up` to raise, not lost in the thread."""
    def guarded() -> None:
        try:
            target(*args)
        except Interrupted:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised by _apply in the main thread
            run.crashed.append(exc)

    thread = threading.Thread(target=guarded, name=name, daemon=True)
    thread.start()
    return thread


def _carried_records(previous: State | None, plan: Plan) -> list[ModelRecord]:
    """The previous records, until this run replaces them: a record is only dropped once what it describes
    is gone, so a run that fails early forgets nothing. Models on a server that is started anew cannot be
    running any more."""
    if previous is None:
        return []
    named = {step.uid for step in plan.steps}  # the manifest's models, and the removed ones still on the server
    carried = [replace(m, attempts=list(m.attempts)) for m in previous.models if m.uid in named]
    if plan.server in ("start", "restart"):
        for record in carried:
            if record.status in ON_SERVER:
                record.status = "terminated"
    return carried
