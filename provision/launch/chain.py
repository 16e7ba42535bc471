"""One model's fallback chain -> an attempt log.

    launch_chain(client, candidates)  -> ChainResult: the winner (or none) and every attempt

Whether the uid already runs is decided by the caller before the chain starts: a chain always launches.
Launches are asynchronous (?wait_ready=false) and polled, so a deadline of our own applies and a
half-launched model can be terminated. Each failure is classified (classify.py); a chain-scoped one
stops the chain and the rest are recorded as skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..engines import engine_verdict
from ..errors import AuthError, ProvisionError, XinferenceError
from ..manifest import Candidate
from ..state import AttemptRecord
from ..xinference import XinferenceClient
from .classify import Failure, FailureKind, Scope, classify, needs_log, short
from .payload import launch_payload
from .summary import summarize_failure

PENDING = {"CREATING", "UPDATING", "LOADING", "PENDING"}  # instance statuses of a launch under way


@dataclass(frozen=True)
class LaunchEvent:
    """For progress display: resolving | launching | progress | ready | failed | skipped."""

    kind: str
    candidate: Candidate
    message: str = ""
    progress: float | None = None  # 0..1 while kind == "progress"

    def __str__(self) -> str:  # one console line, e.g. "fallback 1 bge-m3 on vllm: failed: ..."
        text = f"{self.candidate.label} {self.candidate.describe()}: {self.kind}"
        text += f": {self.message}" if self.message else ""
        return text + (f" {self.progress:.0%}" if self.progress is not None else "")


@dataclass
class ChainResult:
    uid: str  # the winner's uid, else the primary's
    winner: Candidate | None
    attempts: list[AttemptRecord] = field(default_factory=list)
    failure: str | None = None  # summarize_failure(...) when no candidate came up
    payload: dict[str, Any] | None = None  # the body that launched the winner
    ready_seconds: float | None = None  # POST -> READY of the winner

    @property
    def ok(self) -> bool:
        return self.winner is not None


def launch_chain(
    client: XinferenceClient,
    candidates: list[Candidate],
    *,
    resolve_path: Callable[[Candidate], Path | None],
    log_tail: Callable[[], str],
    on_event: Callable[[LaunchEvent], None] | None = None,
    on_launch: Callable[[Candidate, dict], None] | None = None,
    vet: Callable[[Candidate, Path | None], Failure | None] | None = None,
    poll_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ChainResult:
    """Try each candidate in order until one is READY; record every attempt, skipped ones included.

    `vet` looks at the fetched weights before the launch (a Failure stops the candidate). resolve_path fetches
    the candidate's weights (so a fallback is downloaded only when reached); a
    ProvisionError from it is a "download" attempt. Attempt seconds cover resolve + launch.
    """
    if not candidates:
        raise ValueError("launch_chain needs at least one candidate")
    run = _ChainRun(client, resolve_path, log_tail, on_event, on_launch, vet, poll_interval, clock, sleep)
    attempts: list[AttemptRecord] = []
    for index, candidate in enumerate(candidates):
        started = clock()
        payload, failure, ready_seconds = run.attempt(candidate)
        seconds = round(clock() - started, 3)
        if failure is None:
            attempts.append(_record(candidate, "ready", seconds=seconds))
            run.emit("ready", candidate, f"in {ready_seconds:.1f} s")
            return ChainResult(candidate.uid, candidate, attempts, None, payload, ready_seconds)
        attempts.append(_record(candidate, "failed", failure, seconds))
        run.emit("failed", candidate, f"{failure.kind.label}: {failure.reason}")
        if failure.scope is Scope.CHAIN:
            skipped = Failure(failure.kind, Scope.CHAIN, f"not tried: the chain stopped ({failure.kind.label})")
            for rest in candidates[index + 1:]:
                attempts.append(_record(rest, "skipped", skipped))
                run.emit("skipped", rest, skipped.reason)
            break
    uid = candidates[0].uid
    return ChainResult(uid, None, attempts, summarize_failure(uid, attempts, len(candidates)))


@dataclass
class _ChainRun:
    client: XinferenceClient
    resolve_path: Callable[[Candidate], Path | None]
    log_tail: Callable[[], str]
    on_event: Callable[[LaunchEvent], None] | None
    on_launch: Callable[[Candidate, dict], None] | None
    vet: Callable[[Candidate, Path | None], Failure | None] | None
    poll_interval: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    engines: dict[tuple[str, str], Any] = field(default_factory=dict)  # (model_type, name) -> /v1/engines answer

    def emit(self, kind: str, candidate: Candidate, message: str = "", progress: float | None = None) -> None:
        if self.on_event is not None:
            self.on_event(LaunchEvent(kind, candidate, message, progress))

    def attempt(self, candidate: Candidate) -> tuple[dict | None, Failure | None, float | None]:
        """(payload, failure or None, seconds from POST to READY) of one candidate."""
        failure = self.engine_check(candidate)
        if failure is not None:
            return None, failure, None
        self.emit("resolving", candidate)
        try:
            path = self.resolve_path(candidate)
        except ProvisionError as exc:
            return None, Failure(FailureKind.DOWNLOAD, Scope.CANDIDATE, short(exc.message), exc.hint), None
        refused = self.vet(candidate, path) if self.vet is not None else None  # the weights against the name
        if refused is not None:
            return None, refused, None
        payload = launch_payload(candidate, path)
        self.emit("launching", candidate)
        if self.on_launch is not None:  # before the POST: a launch the caller does not know of cannot exist
            self.on_launch(candidate, payload)
        posted = self.clock()
        try:
            self.client.launch(payload)
            failure = self.wait_ready(candidate)
        except XinferenceError as exc:  # the POST itself, or a poll that reached no server
            failure = self.failure_of(exc)
        except BaseException:  # Ctrl-C mid-launch: do not leave a half-launched model behind
            _delete_quietly(self.client, candidate.uid)
            raise
        if failure is not None and failure.kind is FailureKind.OOM and candidate.is_vllm:
            value, defaulted = candidate.gpu_share()
            note = f"gpu_memory_utilization was {value}" + (" (provision's default)" if defaulted else "")
            failure = replace(failure, hint=f"{failure.hint}; {note}")
        return payload, failure, (None if failure else round(self.clock() - posted, 3))

    def engine_check(self, candidate: Candidate) -> Failure | None:
        """Ask the server which engines can run this model before fetching or launching anything.

        The launch error only says "cannot be run on engine X"; /v1/engines says why ("Failed to import
        vLLM: No module named 'vllm'"), and a fallback with other weights is not downloaded for nothing.
        A server without the endpoint, or an answer we do not understand, leaves the decision to launch.
        """
        key = (candidate.model_type, candidate.name)
        if key not in self.engines:
            try:
                self.engines[key] = self.client.engines(candidate.model_type, candidate.name)
            except XinferenceError as exc:
                if isinstance(exc, AuthError) or exc.status is None:
                    return self.failure_of(exc)
                self.engines[key] = None
        verdict = engine_verdict(candidate.engine, candidate.name, self.engines[key])
        if not verdict.blocks:
            return None
        return Failure(FailureKind(verdict.kind), Scope.CANDIDATE, short(verdict.reason), verdict.hint)

    def wait_ready(self, candidate: Candidate) -> Failure | None:
        uid = candidate.uid
        deadline = self.clock() + candidate.launch_timeout
        shown = None
        while True:
            try:
                instance = _instance(self.client.instances(uid), uid)
            except XinferenceError as exc:
                if exc.status is None and self.clock() < deadline and self.client.answers(timeout=5) is not None:
                    # No answer to this poll, but the server answers: it is busy (a model loading on few
                    # cores), not dead. Poll again, within the candidate's deadline.
                    self.emit("progress", candidate, "the server is slow to answer; still waiting")
                    self.sleep(self.poll_interval)
                    continue
                failure = self.failure_of(exc)
                if failure.scope is Scope.CANDIDATE:
                    _delete_quietly(self.client, uid)
                return failure
            status = str(instance.get("status") or "CREATING").upper()
            if status == "READY":
                return None
            if status == "ERROR":  # the uid is reusable after ERROR: nothing to terminate
                message = next((r.get("error_message") for r in instance.get("replica_statuses") or []
                                if r.get("error_message")), "")
                # 200: the server answered, so a connection error inside the model is not a dead server
                return classify(200, message, self.log_tail() if needs_log(message) else "")
            if status not in PENDING:
                return Failure(FailureKind.UNKNOWN, Scope.CANDIDATE, f"the model went {status} while launching")
            if self.on_event is not None:  # progress is one more GET: only when someone shows it
                progress = self.client.progress(uid) or {}
                stage, share = str(progress.get("stage") or status.lower()), progress.get("progress")
                if (stage, share) != shown:  # one event per change, not one per poll
                    shown = (stage, share)
                    self.emit("progress", candidate, stage, share if isinstance(share, (int, float)) else None)
            if self.clock() >= deadline:
                note = "terminated it" if _delete_quietly(self.client, uid) else "could not terminate it"
                return Failure(FailureKind.TIMEOUT, Scope.CANDIDATE,
                               f"not READY after {candidate.launch_timeout:.0f} s (still {status}); {note}",
                               "raise launch_timeout if the model is just slow to load")
            self.sleep(self.poll_interval)

    def failure_of(self, exc: XinferenceError) -> Failure:
        if exc.status is None and not isinstance(exc, AuthError):  # no HTTP answer at all
            return Failure(FailureKind.SERVER_DIED, Scope.CHAIN, short(exc.message),
                           "see the server log; `provision status` shows the server")
        tail = self.log_tail() if needs_log(exc.detail) else ""
        return classify(exc.status, exc.detail or exc.message, tail)


def _instance(instances: list[dict], uid: str) -> dict:
    """The instance record of uid; none yet means the launch is still being registered."""
    return next((i for i in instances if i.get("model_uid") in (uid, None)), instances[0] if instances else {})


def _delete_quietly(client: XinferenceClient, uid: str) -> bool:
    """DELETE the model, True when it was there; a failure to do so is not the launch's failure."""
    try:
        return client.terminate(uid)
    except XinferenceError:
        return False


def _record(candidate: Candidate, outcome: str, failure: Failure | None = None, seconds: float = 0.0) -> AttemptRecord:
    return AttemptRecord(
        candidate=candidate.label, name=candidate.name, engine=candidate.engine, outcome=outcome,
        reason=failure.text() if failure else "", kind=failure.kind.value if failure else "", seconds=seconds)
