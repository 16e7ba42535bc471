"""What `watch` counts as healthy: the recorded server process and its API, each model of the manifest as
the server reports it, and (every few rounds) a real call of each model; and which processes to look at
between checks (the server's, each model's `Model: UID-repN` in its group). Reads the state; changes nothing.

What xinference 4.1 does when a model's process is SIGKILLed (measured on this CPU machine, tiny embedding
model, see the README's `provision watch`):

    +0.2 s   /v1/models still lists it, its instance READY; a call fails: 500 "Remote server ... closed"
    +0.8 s   still listed; GET /v1/models/instances says ERROR (replica TERMINATING); a call fails: 500
             "Model ...-rep0 is in stopping state"
    +2.7 s   /v1/models no longer lists it; the instance stays ERROR
    +10-20 s the worker has recreated it with the same launch arguments (a new `Model:` process; as long as a
             launch takes): READY, calls answer, and /v1/models lists it again 2 s later

Xinference recreates a dead model by itself, without limit by default. XINFERENCE_MODEL_ACTOR_AUTO_RECOVER_LIMIT=N
in the server's environment (server.env) allows N recreations; once they are spent, the next death removes the
model: at +0.6 s GET /v1/models/instances is empty and a call says 404 "Model not found in the model list"
(cached by the server for 10 s), at +2.7 s /v1/models no longer lists it, and nothing brings it back.

So a model whose instance is still there but not READY is being brought back by Xinference: watch waits for that (as long as its last launch took, twice, plus a minute, at most its
launch_timeout) instead of deleting it and launching again, which would double the time it is away. A model
the server no longer has at all, or one Xinference did not bring back in that time, is repaired by `up`.

A SIGKILLed server (the recorded xinference-local process) leaves its actor pool and model processes running
in its group, with the REST port closed: its identity check fails at once, and `up` stops those leftovers
before it starts the new server (apply/serve.py).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import auth, verify
from ..errors import AuthError, ProvisionError
from ..launch.chain import PENDING
from ..manifest import Manifest
from ..runtime import cluster, procs
from ..state import ModelRecord, State, StateDir
from .policy import Finding

_MODEL_TITLE = re.compile(r"^Model: (?P<uid>.+)-rep\d+$")  # how xinference 4.1 names a model's process
ANSWER_TIMEOUT_S = 10.0  # GET /v1/models while launches load the CPU can take seconds: slow is not dead
RECOVERING = PENDING | {"ERROR", "TERMINATING"}  # instance statuses while Xinference recreates a dead model


@dataclass
class Survey:
    """One round of checks."""

    findings: list[Finding] = field(default_factory=list)
    brought_down: bool = False  # the state says `provision down` stopped the stack
    server_pid: int | None = None
    called: dict[str, float] = field(default_factory=dict)  # uid -> latency of its call this round
    # What the loop looks at every second between checks: the server's process and each model's, as seen now
    # ("server", or a uid -> its processes). A death shows within a second, whatever the interval.
    processes: dict[str, tuple[procs.Seen, ...]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)


def digest(path: str | Path) -> str | None:
    """The manifest's content, as a fingerprint (None: it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def brought_down(state: State | None) -> bool:
    """The state is what `provision down` leaves: no server, every model terminated."""
    return state is not None and state.server is None and bool(state.models) and \
        all(m.status == "terminated" for m in state.models)


def was_brought_down(state_dir: StateDir) -> bool:
    try:
        return brought_down(state_dir.read())
    except ProvisionError:
        return False


def survey(state_dir: StateDir, manifest: Manifest, manifest_path: str, applied_digest: str | None,
           call: set[str] | frozenset = frozenset(), timeout: float = ANSWER_TIMEOUT_S) -> Survey:
    """Check the server and every model of the manifest; `call`: the uids to call once as RAGFlow would."""
    result = Survey()
    now_digest = digest(manifest_path)
    result.findings.append(Finding("manifest", now_digest is not None and now_digest == applied_digest,
                                   "it changed since the last `up`" if now_digest else f"{manifest_path} cannot be read",
                                   kind="manifest"))
    uids = [m.uid for m in manifest.models]
    try:
        state = state_dir.read()
    except ProvisionError as exc:
        result.findings.append(Finding("server", False, f"the state cannot be read: {exc.message}", kind="server"))
        result.findings += [Finding(uid, False, "the state cannot be read") for uid in uids]
        return result
    if state is None:
        result.findings.append(Finding("server", False, f"nothing is up (no state in {state_dir.path})", kind="server"))
        result.findings += [Finding(uid, False, "not launched yet") for uid in uids]
        return result
    record = state.server
    if record is None:
        result.brought_down = brought_down(state)
        result.findings.append(Finding("server", False, "no server is recorded", kind="server"))
        result.findings += [Finding(uid, False, "its server is down") for uid in uids]
        return result
    result.server_pid = record.pid
    server, client, listed = _server(state_dir, record, timeout)
    result.findings.append(server)
    if not server.ok:
        result.findings += [Finding(uid, False, "its server is down") for uid in uids]
        return result
    result.processes = processes(record, set(uids))
    findings = {uid: _model(client, state, manifest, uid, listed) for uid in uids}
    to_call = [state.model(uid) for uid, f in findings.items() if f.ok and uid in call]
    for check in _calls(client, to_call):
        if check.ok:
            result.called[check.uid] = check.latency_s or 0.0
        else:
            why = check.diagnosis or "it does not answer as it should"
            findings[check.uid] = Finding(check.uid, False, f"its call failed ({why})", confirm=True,
                                          facts={"message": check.message[:300]})
    result.findings += findings.values()
    return result


def processes(record, uids: set[str]) -> dict[str, tuple[procs.Seen, ...]]:
    """The server's process (one provision started) and the `Model: UID-repN` processes of `uids` in its group
    (every one with that title: a replica, or a helper that took its title). A server provision did not start,
    or a cluster's models on other hosts, have none to watch."""
    found: dict[str, tuple[procs.Seen, ...]] = {}
    if not record.managed or not record.pid or record.create_time is None:
        return found
    found["server"] = (procs.Seen(record.pid, record.create_time),)
    if record.workers:  # a cluster: the models run under the workers, maybe elsewhere
        return found
    for pid in procs.group_members(record.pgid if record.pgid == record.pid else None):
        seen = procs.identity(pid)
        match = _MODEL_TITLE.match(" ".join(seen[0]).strip()) if seen else None
        if match and match["uid"] in uids:
            found[match["uid"]] = found.get(match["uid"], ()) + (procs.Seen(pid, seen[1]),)
    return found


def _server(state_dir: StateDir, record, timeout: float):
    """(the server's finding, a client with the API key, the uids /v1/models lists)."""
    if record.managed and not procs.is_same_process(record):
        why = (f"its process (pid {record.pid}) is now another program" if procs.alive(record.pid)
               else f"its process (pid {record.pid}) is gone")
        return Finding("server", False, why, kind="server", facts={"pid": record.pid}), None, set()
    if record.managed and record.workers:
        gone = cluster.missing_workers(record)
        if gone:
            return Finding("server", False, f"cluster worker {gone[0].address} (pid {gone[0].pid}) is gone",
                           kind="server"), None, set()
    try:
        client = auth.key_client(state_dir, record)
    except ProvisionError as exc:
        return Finding("server", False, f"no API key for it: {exc.message}", kind="server"), None, set()
    if client.answers(timeout=timeout) is None:
        where = f"pid {record.pid} runs but " if record.managed else ""
        return (Finding("server", False, f"{where}its API at {record.url} does not answer", confirm=True,
                        kind="server"), None, set())
    try:
        listed = {m.get("id") for m in client.list_models()}
    except AuthError as exc:  # a revoked key: `up` mints another
        return Finding("server", False, f"it refuses the API key (HTTP {exc.status})", kind="server"), None, set()
    except ProvisionError as exc:
        return Finding("server", False, f"GET /v1/models failed: {exc.message}", confirm=True, kind="server"), None, set()
    return Finding("server", True, kind="server", facts={"pid": record.pid}), client, listed


def _model(client, state: State, manifest: Manifest, uid: str, listed: set[str]) -> Finding:
    record = state.model(uid)
    if record is None:
        return Finding(uid, False, "not launched yet")
    if record.status == "failed":
        return Finding(uid, False, "its last launch failed: " + (record.error or "").splitlines()[0][:200])
    if record.status == "launching":
        return Finding(uid, False, "a launch of it was interrupted")
    if record.status != "running":
        return Finding(uid, False, f"it is {record.status}")
    try:
        instances = [i for i in client.instances(uid) if isinstance(i, dict) and i.get("model_uid") in (uid, None)]
    except ProvisionError:
        instances = None  # not known: the listing decides
    if instances == [] and uid in listed:  # evicted a moment ago: the listing lags 2 s behind
        return Finding(uid, False, "the server no longer runs it (it has no instance of it)")
    instances = instances or []
    status = str(instances[0].get("status") or "").upper() if instances else ""
    replicas = [str(r.get("status")) for r in (instances[0].get("replica_statuses") or []) if isinstance(r, dict)] \
        if instances else []
    facts = {"instance": status, "replicas": replicas} if instances else {}
    if status and status != "READY" and status in RECOVERING:
        shown = status + (f" (replicas {', '.join(replicas)})" if replicas else "")
        return Finding(uid, False, f"its instance is {shown}: its process died", defer_s=_grace(record, manifest),
                       facts=facts)
    if uid in listed and status in ("", "READY"):
        return Finding(uid, True, facts=facts)
    if status == "READY":  # how a recreation ends: READY a few seconds before the listing shows it again
        return Finding(uid, False, "its instance is READY but /v1/models does not list it", confirm=True,
                       defer_s=_grace(record, manifest), facts=facts)
    return Finding(uid, False, "the server no longer runs it" + (f" (instance {status})" if status else ""), facts=facts)


def _grace(record: ModelRecord, manifest: Manifest) -> float:
    """How long Xinference gets to recreate a dead model before `up` relaunches it: its last launch's time,
    twice, plus a minute, within the candidate's launch_timeout."""
    timeout = 900.0
    for index, spec in enumerate(manifest.models):
        if spec.uid == record.uid:
            chain = manifest.candidates(index)
            won = next((c for c in chain if c.label == record.candidate), chain[0])
            timeout = won.launch_timeout
    if record.ready_seconds:
        return min(timeout, 2 * record.ready_seconds + 60)
    return timeout


def _calls(client, records: list[ModelRecord]) -> list[verify.CheckResult]:
    """One call of each model, side by side, in daemon threads: a stop signal is never held up by a slow call
    (the main thread waits in short slices, and an abandoned call ends with the process)."""
    results: dict[str, verify.CheckResult] = {}

    def one(record: ModelRecord) -> None:
        results[record.uid] = verify.verify_model(client, record)

    threads = [threading.Thread(target=one, args=(r,), name=f"watch-call-{r.uid}", daemon=True) for r in records]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max(verify.CHECK_TIMEOUT_S.values()) + 10
    for thread in threads:
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
    return [results[r.uid] for r in records if r.uid in results]
