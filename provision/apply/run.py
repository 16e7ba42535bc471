"""The mutable bits of one `up`, shared by its stage threads: the state (every write goes through here),
the clients once the server answers, and the clock of each stage."""

from __future__ import annotations

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


class UpRun:
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

    def record_server(self, record: ServerRecord) -> None:
        with self.lock:
            self.state.server = record
            self.state_dir.write(self.state)

