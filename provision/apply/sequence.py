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
from pathlib import Path

from .. import verify
from ..auth import security_warnings
from ..console import Console
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from ..manifest import load
from ..observe import observe
from ..plan import KEEP, TERMINATE, Plan, make_plan
from ..ragflow import config as ragflow
from ..render import plan_lines
from ..runtime import server
from ..state import State, StateDir
from .models import bring_up
from .run import UpResult, UpRun
from .serve import serve


# Launches beyond this wait their turn: each model process imports torch (~20 s of CPU on a small
# machine) and Xinference itself allows 5 concurrent launches.
MAX_PARALLEL_LAUNCHES = max(1, min(3, (os.cpu_count() or 2)))



def up(manifest_path: str, state_dir: StateDir, console: Console | None = None) -> UpResult:
    console = console or Console()
    manifest = load(manifest_path)
    with state_dir.lock("up"):
        previous = state_dir.read()
        plan = make_plan(manifest, observe(manifest, previous, state_dir))
        plan.warnings += security_warnings(manifest, state_dir)
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
        kept = {s.uid for s in plan.steps if s.action == KEEP}
        if previous:
            state.models = [m for m in previous.models if m.uid in kept]
        run = UpRun(manifest, state_dir, state, console)
        run.previous_server = previous.server if previous else None
        try:
            return _apply(run, plan)
        except KeyboardInterrupt:
            run.save()
            console.line(f"interrupted: what was started is recorded in {state_dir.path}; `provision down` stops it")
            raise


def _apply(run: UpRun, plan: Plan) -> UpResult:
    manifest, console = run.manifest, run.console
    serve_thread = threading.Thread(target=serve, args=(run, plan), name="serve", daemon=True)
    serve_thread.start()
    to_launch = [(i, s) for i, s in enumerate(plan.steps) if s.action not in (KEEP, TERMINATE)]
    launch_slots = threading.Semaphore(MAX_PARALLEL_LAUNCHES)
    with ThreadPoolExecutor(max_workers=max(1, len(to_launch)), thread_name_prefix="model") as pool:
        futures = [pool.submit(bring_up, run, plan, index, launch_slots) for index, _ in to_launch]
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

