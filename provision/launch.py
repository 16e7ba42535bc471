"""One model's fallback chain -> an attempt log; what each failure means and whether to go on.

    launch_payload(candidate, path)   -> the POST /v1/models body of one candidate
    classify(status, detail, tail)    -> Failure(kind, scope, reason, hint) from Xinference's real texts
    launch_chain(client, candidates)  -> ChainResult: the winner (or none) and every attempt
    summarize_failure(uid, attempts, total) -> one message: most specific cause, then each attempt
    render_attempts(attempts)         -> aligned lines for a report

Whether the uid already runs (client.describe) is decided by the caller, apply.py, before the chain
starts: a chain always launches. Launches are asynchronous (?wait_ready=false) and polled, so a
deadline of our own applies and a half-launched model can be terminated.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from .errors import AuthError, ProvisionError, XinferenceError
from .manifest import Candidate
from .state import AttemptRecord
from .xinference import XinferenceClient, clean_detail

# vLLM reserves this share of the card's TOTAL memory and refuses to start when less is free; its own
# default (0.9) fails as soon as anything else holds memory on the card. These defaults let chat +
# embedding + rerank all run on vLLM on one card (0.95) while chat gets most of it. A manifest value
# always wins; an OOM reason says which value was sent and whether it was this default.
DEFAULT_GPU_MEMORY_UTILIZATION = {"LLM": 0.75, "embedding": 0.1, "rerank": 0.1}
# Keys engine options may not override: the chain tracks the model by uid, and wait_ready in the body
# is an HTTP 500 ("got multiple values for keyword argument 'wait_ready'").
_RESERVED_OPTIONS = {"model_uid", "model_name", "model_type", "wait_ready"}
_ABSENT = object()
_PENDING = {"CREATING", "UPDATING", "LOADING", "PENDING"}
REASON_CHARS = 240  # a Failure's reason; summary lines cut to 160


def gpu_memory_utilization(candidate: Candidate) -> tuple[float, bool]:
    """(value sent to vLLM, True when it is provision's default rather than the manifest's)."""
    if candidate.gpu_memory_utilization == "auto":  # the plan resolves auto; never send the word to vLLM
        return DEFAULT_GPU_MEMORY_UTILIZATION.get(candidate.model_type, 0.75), True
    if candidate.gpu_memory_utilization is not None:
        return candidate.gpu_memory_utilization, False
    return DEFAULT_GPU_MEMORY_UTILIZATION.get(candidate.model_type, 0.75), True


def launch_payload(candidate: Candidate, model_path: Path | None) -> dict[str, Any]:
    """The POST /v1/models body; None-valued optional keys are left out (n_gpu: null means CPU)."""
    payload: dict[str, Any] = {
        "model_uid": candidate.uid,
        "model_name": candidate.name,
        "model_type": candidate.model_type,
        "model_engine": candidate.engine or None,
        "model_format": candidate.format,
        "model_size_in_billions": candidate.size_in_billions,
        "quantization": candidate.quantization,
        "replica": candidate.replica,
        "gpu_idx": candidate.gpu_idx,
        "worker_ip": candidate.worker_ip,
        "model_path": str(model_path) if model_path is not None else None,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    payload["n_gpu"] = candidate.n_gpu  # always sent, null = CPU: left out, Xinference picks "auto"
    payload["enable_virtual_env"] = candidate.virtual_env  # always sent: the server's default is ON
    if candidate.is_vllm:
        payload["gpu_memory_utilization"] = gpu_memory_utilization(candidate)[0]
    payload.update({k: v for k, v in candidate.options.items() if k not in _RESERVED_OPTIONS})
    return payload


# --------------------------------------------------------------------------------------------------
# Classification


class FailureKind(str, Enum):
    """Why a candidate failed. Declared most specific first: the summary leads with the earliest kind
    among the attempts (a refused key explains every attempt; a timeout or unknown error, least)."""

    AUTH = "auth", "credentials refused"
    OOM = "oom", "out of memory"
    BAD_PATH = "bad_path", "bad model folder"
    ENGINE_MISSING = "engine_missing", "engine not installed"
    MODEL_NOT_FOUND = "model_not_found", "model not found"
    ENGINE_UNSUPPORTED = "engine_unsupported", "engine cannot run the model"
    VENV_FAILED = "venv_failed", "virtualenv install failed"
    UID_IN_USE = "uid_in_use", "uid already in use"
    NO_SLOT = "no_slot", "no free slot"
    DOWNLOAD = "download", "download failed"
    SERVER_DIED = "server_died", "server stopped answering"
    TIMEOUT = "timeout", "timed out"
    UNKNOWN = "unknown", "failed"

    def __new__(cls, value: str, label: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member


class Scope(str, Enum):
    CANDIDATE = "candidate"  # try the next candidate
    CHAIN = "chain"  # no candidate can help: stop, skip the rest


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    scope: Scope
    reason: str  # short, without the "[address=..., pid=...]" prefix
    hint: str | None = None

    def text(self) -> str:
        return f"{self.reason} (hint: {self.hint})" if self.hint else self.reason


_OOM_FREE = "other processes hold memory on that GPU: lower gpu_memory_utilization, free the card, or pin gpu_idx"
_OOM_KV = ("raise gpu_memory_utilization or lower max_model_len (options), or set enforce_eager: true "
           "to save CUDA-graph memory")
_OOM_TORCH = "lower gpu_memory_utilization or max_model_len, set enforce_eager: true, or pick a smaller model"
# (kind, pattern, hint), first match wins: order matters where texts overlap (a bad model_path is an
# "Invalid input", a failed uv install may mention a missing module).
_RULES: list[tuple[FailureKind, re.Pattern, str | None]] = [
    (FailureKind.UID_IN_USE, re.compile(r"already in the model list"),
     "another launch holds this uid: `provision down`, or give the model another uid"),
    (FailureKind.BAD_PATH, re.compile(r"File or directory does not exist|Error no file named", re.I),
     "check local_path, or that the download finished"),
    (FailureKind.VENV_FAILED, re.compile(r"\buv\b.*\bpip\b.*\binstall\b.*returned non-zero exit status", re.S),
     "the per-model virtualenv could not install the engine: set server.virtual_env: false or check the network"),
    (FailureKind.ENGINE_MISSING, re.compile(r"Failed to import|No module named|library is not installed|"
                                            r"Please make sure '[^']+' is installed"),
     "install the engine into the server's Python, or pick another engine"),
    (FailureKind.ENGINE_UNSUPPORTED, re.compile(r"cannot be run on engine"),
     "Xinference says this also when the engine is not installed; GET /v1/engines/<type>/<name> tells which"),
    (FailureKind.MODEL_NOT_FOUND, re.compile(r"Model not found, name:|\b(?:Rerank|Embedding|Image|Audio|Video) "
                                             r"model \S+ not found"),
     "check name, size_in_billions, format and quantization against Xinference's built-in models"),
    (FailureKind.OOM, re.compile(r"Free memory on device"), _OOM_FREE),
    (FailureKind.OOM, re.compile(r"No available memory for the cache blocks|KV cache is needed|"
                                 r"larger than the available KV cache memory"), _OOM_KV),
    (FailureKind.OOM, re.compile(r"CUDA out of memory|OutOfMemoryError"), _OOM_TORCH),
    (FailureKind.NO_SLOT, re.compile(r"No available slot|No available worker found|Requested GPUs exceed"),
     "the GPUs are taken: stop another model, or set gpu_idx / n_gpu"),
    (FailureKind.SERVER_DIED, re.compile(r"cannot reach the Xinference server|Connection refused|"
                                         r"Connection aborted|RemoteDisconnected", re.I), None),
]
# vLLM V1 only says this; the real cause is in the server log above it.
_SEE_LOG = re.compile(r"Engine core initialization failed|See root cause above")
_EXCEPTION_TEXT = re.compile(r"\b\w*(?:Error|Exception): .*")


def classify(status: int | None, detail: str, log_tail: str = "") -> Failure:
    """What a launch failure means, from its HTTP status and Xinference's error text."""
    reason = _short(clean_detail(detail))
    if status in (401, 403):
        return Failure(FailureKind.AUTH, Scope.CHAIN, reason or f"HTTP {status}",
                       "the server has authentication on; give provision an API key")
    for kind, pattern, hint in _RULES:
        if pattern.search(detail) and (kind is not FailureKind.SERVER_DIED or status is None):
            scope = Scope.CHAIN if kind is FailureKind.SERVER_DIED else Scope.CANDIDATE
            return Failure(kind, scope, reason, hint)
    if log_tail and _needs_log(detail):
        found = _from_log(log_tail)
        if found is not None:
            return found
    hint = "vLLM logs the real cause just above this line in the server log" if _SEE_LOG.search(detail) else None
    return Failure(FailureKind.UNKNOWN, Scope.CANDIDATE, reason or "no error message; see the server log", hint)


def _from_log(log_tail: str) -> Failure | None:
    """The last log line a rule recognises (chain-scoped kinds excluded: a log line is not a live server)."""
    for line in reversed(log_tail.splitlines()):
        for kind, pattern, hint in _RULES:
            if kind is not FailureKind.SERVER_DIED and pattern.search(line):
                match = _EXCEPTION_TEXT.search(line)
                text = match.group(0) if match else line.strip()
                return Failure(kind, Scope.CANDIDATE, _short("server log: " + clean_detail(text)), hint)
    return None


def _needs_log(detail: str) -> bool:
    return not detail.strip() or bool(_SEE_LOG.search(detail))


def _short(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# --------------------------------------------------------------------------------------------------
# The chain


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
    poll_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ChainResult:
    """Try each candidate in order until one is READY; record every attempt, skipped ones included.

    resolve_path fetches the candidate's weights (so a fallback is downloaded only when reached); a
    ProvisionError from it is a "download" attempt. Attempt seconds cover resolve + launch.
    """
    if not candidates:
        raise ValueError("launch_chain needs at least one candidate")
    run = _Run(client, resolve_path, log_tail, on_event, poll_interval, clock, sleep)
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
class _Run:
    client: XinferenceClient
    resolve_path: Callable[[Candidate], Path | None]
    log_tail: Callable[[], str]
    on_event: Callable[[LaunchEvent], None] | None
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
            return None, Failure(FailureKind.DOWNLOAD, Scope.CANDIDATE, _short(exc.message), exc.hint), None
        payload = launch_payload(candidate, path)
        self.emit("launching", candidate)
        posted = self.clock()
        try:
            self.client.launch(payload)
            failure = self.wait_ready(candidate)
        except XinferenceError as exc:  # the POST itself, or a poll that reached no server
            failure = self.failure_of(exc)
        except BaseException:  # Ctrl-C mid-launch: do not leave a half-launched model behind
            _terminate(self.client, candidate.uid)
            raise
        if failure is not None and failure.kind is FailureKind.OOM and candidate.is_vllm:
            value, defaulted = gpu_memory_utilization(candidate)
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
        offered = self.engines[key]
        if not isinstance(offered, dict) or not offered:
            return None
        verdict = next((v for k, v in offered.items() if k.lower() == candidate.engine.lower()), _ABSENT)
        if verdict is _ABSENT:
            names = ", ".join(sorted(offered))
            return Failure(FailureKind.ENGINE_UNSUPPORTED, Scope.CANDIDATE,
                           _short(f"Xinference has no {candidate.engine} engine for {candidate.name}; it has: {names}"),
                           "pick one of those engines")
        if isinstance(verdict, str):
            return Failure(FailureKind.ENGINE_MISSING, Scope.CANDIDATE,
                           _short(f"engine {candidate.engine} is not usable on this server: {verdict}"),
                           "install the engine into the server's Python, or let the chain move on")
        return None

    def wait_ready(self, candidate: Candidate) -> Failure | None:
        uid = candidate.uid
        deadline = self.clock() + candidate.launch_timeout
        shown = None
        while True:
            try:
                instance = _instance(self.client.instances(uid), uid)
            except XinferenceError as exc:
                failure = self.failure_of(exc)
                if failure.scope is Scope.CANDIDATE:
                    _terminate(self.client, uid)
                return failure
            status = str(instance.get("status") or "CREATING").upper()
            if status == "READY":
                return None
            if status == "ERROR":  # the uid is reusable after ERROR: nothing to terminate
                message = next((r.get("error_message") for r in instance.get("replica_statuses") or []
                                if r.get("error_message")), "")
                # 200: the server answered, so a connection error inside the model is not a dead server
                return classify(200, message, self.log_tail() if _needs_log(message) else "")
            if status not in _PENDING:
                return Failure(FailureKind.UNKNOWN, Scope.CANDIDATE, f"the model went {status} while launching")
            if self.on_event is not None:  # progress is one more GET: only when someone shows it
                progress = self.client.progress(uid) or {}
                stage, share = str(progress.get("stage") or status.lower()), progress.get("progress")
                if (stage, share) != shown:  # one event per change, not one per poll
                    shown = (stage, share)
                    self.emit("progress", candidate, stage, share if isinstance(share, (int, float)) else None)
            if self.clock() >= deadline:
                note = "terminated it" if _terminate(self.client, uid) else "could not terminate it"
                return Failure(FailureKind.TIMEOUT, Scope.CANDIDATE,
                               f"not READY after {candidate.launch_timeout:.0f} s (still {status}); {note}",
                               "raise launch_timeout if the model is just slow to load")
            self.sleep(self.poll_interval)

    def failure_of(self, exc: XinferenceError) -> Failure:
        if exc.status is None and not isinstance(exc, AuthError):  # no HTTP answer at all
            return Failure(FailureKind.SERVER_DIED, Scope.CHAIN, _short(exc.message),
                           "see the server log; `provision status` shows the server")
        tail = self.log_tail() if _needs_log(exc.detail) else ""
        return classify(exc.status, exc.detail or exc.message, tail)


def _instance(instances: list[dict], uid: str) -> dict:
    """The instance record of uid; none yet means the launch is still being registered."""
    return next((i for i in instances if i.get("model_uid") in (uid, None)), instances[0] if instances else {})


def _terminate(client: XinferenceClient, uid: str) -> bool:
    try:
        return client.terminate(uid)
    except XinferenceError:
        return False


def _record(candidate: Candidate, outcome: str, failure: Failure | None = None, seconds: float = 0.0) -> AttemptRecord:
    return AttemptRecord(
        candidate=candidate.label, name=candidate.name, engine=candidate.engine, outcome=outcome,
        reason=failure.text() if failure else "", kind=failure.kind.value if failure else "", seconds=seconds)


# --------------------------------------------------------------------------------------------------
# Messages


def _kind(value: str) -> FailureKind:
    try:
        return FailureKind(value)
    except ValueError:  # a state file may hold a kind this version does not know
        return FailureKind.UNKNOWN


def summarize_failure(uid: str, attempts: list[AttemptRecord], total: int) -> str:
    """One message: the most specific cause first, then one line per distinct attempt outcome."""
    failed = [a for a in attempts if a.outcome == "failed"]
    tried = sum(a.outcome != "skipped" for a in attempts)
    if failed:
        lead = min(failed, key=lambda a: list(FailureKind).index(_kind(a.kind)))  # first of equals wins
        lines = [f"{uid} could not be launched: {_kind(lead.kind).label}: {lead.reason}"]
    else:
        lines = [f"{uid} could not be launched: no candidate was tried"]
    lines.append(f"tried {tried} of {total} candidate{'s' if total != 1 else ''}:")
    groups: dict[tuple[str, str, str], list[AttemptRecord]] = {}
    for a in attempts:  # identical outcomes merge into one line
        groups.setdefault((a.outcome, a.kind, a.reason), []).append(a)
    entries = []
    for (outcome, kind, reason), group in groups.items():
        who = ", ".join(f"{a.candidate} {a.name} on {a.engine}" for a in group)
        what = _kind(kind).label if outcome == "failed" else outcome
        entries.append(f"  {who}: {what}" + (f": {_short(reason, 160)}" if reason else ""))
    if len(entries) > 5:
        entries = entries[:5] + [f"  and {len(entries) - 5} more"]
    return "\n".join(lines + entries)


def render_attempts(attempts: list[AttemptRecord]) -> list[str]:
    """Aligned rows: label, name, engine, outcome, seconds, kind: reason."""
    rows = [(a.candidate, a.name, a.engine, a.outcome, f"{a.seconds:.1f}s",
             (f"{_kind(a.kind).label}: " if a.outcome == "failed" else "") + _short(a.reason, 160))
            for a in attempts]
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join([*(row[i].rjust(widths[i]) if i == 4 else row[i].ljust(widths[i]) for i in range(5)),
                       row[5]]).rstrip() for row in rows]
