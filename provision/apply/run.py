"""The mutable bits of one `up`, shared by its stage threads: the state (every write goes through here),
the clients once the server answers, the clock of each stage, and the stop signal.

An interrupted `up` (Ctrl-C, SIGTERM) sets `stop`: every wait of a stage thread (`run.sleep`) then raises
Interrupted, so a chain cleans up the launch it has in flight and ends within seconds. What was asked of
the server is in the state from the moment it was asked (`launching`), so `down` finds it even after a
SIGKILL.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ..console import Console
from ..errors import ProvisionError
from ..manifest import Manifest
from ..plan import Plan
from ..state import ModelRecord, ServerRecord, State, StateDir
from ..verify import CheckResult
from ..xinference import XinferenceClient


@dataclass
class UpResult:
    plan: Plan
    state: State
    checks: list[CheckResult]
    provider: dict | None
    files: dict[str, str]
    paste: str
    timings: dict[str, float]
    exit_code: int
    terminated: list[str] = field(default_factory=list)
    earlier_server: str = ""  # what stopping the server an earlier `up` started did (a restart)
    ragflow_applied: object = None  # ragflow.result.ApplyResult, when the manifest has ragflow.url
    ragflow_error: object = None  # the ProvisionError that stopped registering in RAGFlow


class Interrupted(KeyboardInterrupt):
    """Raised in a stage thread when `up` was told to stop."""


class UpRun:
    """The mutable bits of one `up`, shared by the stage threads; every state write goes through here."""

    def __init__(self, manifest: Manifest, state_dir: StateDir, state: State, console: Console):
        # The server's environment is taken now, in the main thread, before any stage thread could change it.
        self.environ = dict(os.environ)
        self.stop = threading.Event()
        self.download_slots = threading.Semaphore(manifest.download.parallel)
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
        self.refetch: set[str] = set()
        self.probes: dict[str, CheckResult] = {}  # the checks of kept models, made by observe before the plan  # uids whose weights are checked against the hub again (--refetch)
        self.terminated: list[str] = []
        self.earlier_server = ""  # models no longer in the manifest, terminated before the launches
        self.crashed: list[BaseException] = []  # a stage thread's unexpected error, raised again by `up`
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

    def drop_model(self, uid: str) -> None:
        with self.lock:
            self.state.models = [m for m in self.state.models if m.uid != uid]
            self.state_dir.write(self.state)

    def add_span(self, stage: str, started: float) -> None:
        """Stages overlap across models: a stage's time is the wall-clock span from its first start to
        its last end, not a sum over models."""
        with self.lock:
            first, _ = self.spans.get(stage, (started, started))
            self.spans[stage] = (min(first, started), time.monotonic())
            self.stage_seconds[stage] = self.spans[stage][1] - self.spans[stage][0]

    def record_server(self, record: ServerRecord) -> None:
        with self.lock:
            self.state.server = record
            self.state_dir.write(self.state)

    def server_environ(self) -> dict[str, str]:
        """The environment the server is started with: this process's, as it was when `up` began."""
        return dict(self.environ)

    def sleep(self, seconds: float) -> None:
        """A stage thread's wait; raises Interrupted as soon as `up` is told to stop."""
        if self.stop.wait(seconds):
            raise Interrupted()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

