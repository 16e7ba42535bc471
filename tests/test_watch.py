"""`provision watch` without a real server: the backoff and the loop on a fed clock with fake checks and a fake
`up`, what the checks make of canned Xinference answers, the log, stopping on signals, one watch per state
folder. (Against the real xinference-local: test_watch_e2e.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import responses
from e2e_support import PROVISION, cli_env
from support import free_port

from provision.errors import ManifestError, ServerError
from provision.manifest import parse
from provision.state import ModelRecord, ServerRecord, State, StateDir
from provision.watch import checks
from provision.watch.events import EventLog
from provision.runtime import procs
from provision.watch.loop import SETTLE_S, Options, StopSignals, Watcher, up_summary
from provision.watch.policy import Backoff, Finding, Ledger

URL = "http://127.0.0.1:9997"
MANIFEST = """\
version: 1
name: t
server: {host: 127.0.0.1, port: 9997, auth: false}
models:
  - {role: embedding, uid: emb, name: bge-small-en-v1.5, local_path: /models/bge, engine: sentence_transformers}
  - {role: rerank, uid: rr, name: bge-reranker-base, local_path: /models/rr, engine: sentence_transformers}
roles: {chat: 0}
"""


def leader_record(leader: subprocess.Popen, pids) -> ServerRecord:
    """The record of a stand-in server process, once the child it starts has written its pid to `pids`."""
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().strip()):
        assert time.monotonic() < deadline, "the stand-in did not start its child"
        time.sleep(0.05)
    me = psutil.Process(leader.pid)
    return ServerRecord(url=URL, managed=True, pid=leader.pid, pgid=leader.pid, cmdline=me.cmdline(),
                        create_time=me.create_time())


# -- the backoff ----------------------------------------------------------------------------------------

def test_the_delay_doubles_from_five_seconds_and_caps_at_five_minutes():
    assert [Backoff().delay(n) for n in range(10)] == [0, 5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert Backoff(base=1, factor=3, cap=10).delay(4) == 10


def bad(subject: str, reason: str = "the server no longer runs it", **kw) -> Finding:
    return Finding(subject, False, reason, **kw)


def good(subject: str) -> Finding:
    return Finding(subject, True)


def test_a_subject_that_stays_broken_is_tried_at_growing_intervals():
    ledger, now, tries = Ledger(), 0.0, []
    ledger.update([bad("emb")], now)
    while now < 3600:
        if ledger.due(now):
            tries.append(now)
            ledger.started_repair(now)
            events = ledger.after_repair([bad("emb")], now)
            assert [e.event for e in events] == ["repair_failed"]
        now += 1.0
        ledger.update([bad("emb")], now)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[:6] == [5, 10, 20, 40, 80, 160]
    assert set(gaps[6:]) == {300}  # capped: no spin, and it is still tried
    assert len(tries) < 20


def test_a_repair_that_lasts_resets_the_backoff_only_after_it_stays_healthy():
    ledger = Ledger(Backoff(stable=300))
    ledger.update([bad("emb")], 0)
    assert [t.subject for t in ledger.due(0)] == ["emb"]  # the first repair is at once
    ledger.started_repair(0)
    events = ledger.after_repair([good("emb")], 20)
    assert [(e.event, e.facts["seconds"]) for e in events] == [("repaired", 20)]
    # it dies again 30 s later: it flaps, so this drift waits the backoff of its first repair
    ledger.update([bad("emb")], 50)
    assert ledger.due(50) == [] and [t.subject for t in ledger.due(55)] == ["emb"]
    ledger.started_repair(55)
    ledger.after_repair([good("emb")], 70)
    ledger.update([bad("emb")], 80)
    assert ledger.due(84) == [] and ledger.due(90)  # 10 s now
    ledger.started_repair(90)
    ledger.after_repair([good("emb")], 100)
    events = ledger.update([good("emb")], 399)
    assert events == []
    events = ledger.update([good("emb")], 401)  # healthy for 300 s: its backoff starts afresh
    assert [e.event for e in events] == ["stable"]
    ledger.update([bad("emb")], 500)
    assert ledger.due(500)


def test_a_model_xinference_is_recreating_is_left_to_it_and_recovers_without_a_repair():
    ledger = Ledger()
    events = ledger.update([bad("emb", "its instance is ERROR: its process died", defer_s=80)], 0)
    assert [e.event for e in events] == ["drift", "waiting"]
    assert "80 s" in events[1].detail
    assert ledger.due(79) == [] and ledger.due(80)
    assert ledger.next_wake(10, interval=30, recheck=5) == 5  # looks again soon
    events = ledger.update([good("emb")], 21)
    assert [(e.event, e.detail) for e in events] == [("recovered", "answering again after 21.0 s (without a repair from watch)")]
    assert ledger.tracks["emb"].attempts == 0


def test_a_deferred_model_that_xinference_drops_is_repaired_at_once():
    ledger = Ledger()
    ledger.update([bad("emb", "its instance is ERROR", defer_s=80)], 0)
    events = ledger.update([bad("emb", "the server no longer runs it")], 5)
    assert [e.event for e in events] == ["still"]
    assert ledger.due(5)


def test_transient_evidence_needs_a_second_look():
    ledger = Ledger()
    ledger.update([bad("emb", "its call failed (fails on use)", confirm=True)], 0)
    assert ledger.due(0) == [] and ledger.next_wake(0, interval=30, recheck=5) == 5
    ledger.update([good("emb")], 5)  # it was a blip
    assert ledger.due(5) == []
    ledger.update([bad("emb", "its call failed", confirm=True)], 10)
    ledger.update([bad("emb", "its call failed", confirm=True)], 15)
    assert ledger.due(15)


# -- the loop, on a fed clock ---------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += max(seconds, 0.01)


class FakeUp:
    """`up` that records its calls, takes `seconds`, and may raise."""

    def __init__(self, clock: Clock, seconds: float = 10.0, fail: Exception | None = None):
        self.clock, self.seconds, self.fail, self.calls = clock, seconds, fail, []

    def __call__(self, path, state_dir, console=None):
        self.calls.append(self.clock.now)
        self.clock.now += self.seconds
        if self.fail is not None:
            raise self.fail
        return FakeResult()


class FakeResult:
    exit_code = 0
    timings = {"total": 10.0}

    class plan:
        server = "reuse"
        steps = []

    class state:
        @staticmethod
        def model(uid):
            return None


class Script:
    """Survey results in order: a list of {subject: Finding-or-True} rounds; the last round repeats."""

    def __init__(self, rounds, stop_after: int | None = None, down_after: int | None = None):
        self.rounds, self.stop_after, self.down_after, self.calls = rounds, stop_after, down_after, []

    def __call__(self, state_dir, manifest, path, applied, call):
        self.calls.append(set(call))
        if self.stop_after is not None and len(self.calls) > self.stop_after:
            raise KeyboardInterrupt()
        result = checks.Survey(server_pid=42)
        result.brought_down = self.down_after is not None and len(self.calls) > self.down_after
        round_ = self.rounds[min(len(self.calls) - 1, len(self.rounds) - 1)]
        for subject, value in round_.items():
            kind = subject if subject in ("server", "manifest") else "model"
            result.findings.append(Finding(subject, True, kind=kind) if value is True else value)
        return result


def healthy() -> dict:
    return {"manifest": True, "server": True, "emb": True, "rr": True}


def watcher(tmp_path, script, up, clock, lines, **options) -> Watcher:
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    log = EventLog(lines.append, str(tmp_path / "watch.jsonl"), clock=time.time)
    return Watcher(str(path), StateDir(tmp_path / "state"), log, _Silent(), Options(**options), up=up,
                   survey=script, clock=clock, sleep=clock.sleep)


class _Silent:
    stream = None

    def line(self, text=""):
        pass


def events_of(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "watch.jsonl").read_text().splitlines()]


def test_the_loop_runs_up_once_then_only_when_something_drifted(tmp_path):
    clock, lines = Clock(), []
    dead = bad("emb", "the server no longer runs it")
    rounds = [healthy()] * 4 + [{**healthy(), "emb": dead}] + [healthy()] * 10
    script = Script(rounds, stop_after=15)
    up = FakeUp(clock)
    w = watcher(tmp_path, script, up, clock, lines, interval=30)
    assert w.run() == 130  # no signal recorded: Ctrl-C
    assert len(up.calls) == 2  # the first `up`, then one repair
    names = [e["event"] for e in events_of(tmp_path)]
    assert names[:4] == ["start", "repair", "up", "ok"]
    assert names[-1] == "stop"
    drift = next(e for e in events_of(tmp_path) if e["event"] == "drift")
    assert drift["subject"] == "emb" and drift["detail"] == "the server no longer runs it" and drift["kind"] == "model"
    repaired = next(e for e in events_of(tmp_path) if e["event"] == "repaired")
    assert repaired["subject"] == "emb" and repaired["seconds"] == pytest.approx(10.0, abs=0.1)
    assert names.count("ok") == 2  # the quiet rounds are not logged one by one
    assert all(line[:4].isdigit() and line[10] == " " for line in lines)  # timestamped
    # every 5th check calls each model; the check right after a repair calls them all
    assert script.calls[0] == {"emb", "rr"} and script.calls[1] == set()


def test_a_model_that_cannot_come_up_is_retried_with_backoff_not_spun(tmp_path):
    clock, lines = Clock(), []
    failed = bad("emb", "its last launch failed: every candidate failed")
    script = Script([{**healthy(), "emb": failed}], stop_after=400)
    up = FakeUp(clock, seconds=12)
    w = watcher(tmp_path, script, up, clock, lines, interval=30)
    w.run()
    gaps = [round(b - a - 12) for a, b in zip(up.calls, up.calls[1:])]  # from the end of one `up` to the next
    assert gaps[:5] == [5, 10, 20, 40, 80] and gaps[-1] == 300
    failures = [e for e in events_of(tmp_path) if e["event"] == "repair_failed"]
    assert failures[0]["detail"].endswith("next try in 5 s") and failures[-1]["next_try_s"] == 300


def test_an_up_that_raises_is_a_failed_repair_with_its_message(tmp_path):
    clock, lines = Clock(), []
    gone = bad("server", "its process (pid 42) is gone", kind="server")
    script = Script([healthy(), {**healthy(), "server": gone}], stop_after=6)
    up = FakeUp(clock)
    w = watcher(tmp_path, script, up, clock, lines, interval=30)

    def fail_after_first(path, state_dir, console=None):
        if up.calls:
            up.fail = ServerError("xinference-local exited with code 1 after 3.0 s")
        return up(path, state_dir, console)

    w.up = fail_after_first
    w.run()
    failed = [e for e in events_of(tmp_path) if e["event"] == "repair_failed"]
    assert failed and "xinference-local exited with code 1" in failed[0]["detail"]
    assert any(e["event"] == "up" and e["detail"].startswith("failed") for e in events_of(tmp_path))


def test_a_bad_manifest_stops_watch_before_anything_runs(tmp_path):
    path = tmp_path / "m.yml"
    path.write_text("version: 1\nname: t\nmodels: []\nbogus: 1\n")
    with pytest.raises(ManifestError):
        Watcher(str(path), StateDir(tmp_path / "state"), EventLog(lambda s: None), _Silent())


def test_the_manifest_edited_later_but_broken_is_a_failed_repair_not_the_end(tmp_path):
    clock, lines = Clock(), []
    changed = Finding("manifest", False, "it changed since the last `up`", kind="manifest")
    script = Script([healthy(), {**healthy(), "manifest": changed}], stop_after=4)
    up = FakeUp(clock)
    w = watcher(tmp_path, script, up, clock, lines, interval=30)

    def broken_after_first(path, state_dir, console=None):
        if up.calls:
            up.fail = ManifestError(path, [])
        return up(path, state_dir, console)

    w.up = broken_after_first
    assert w.run() == 130
    assert any(e["event"] == "repair_failed" and e["subject"] == "manifest" for e in events_of(tmp_path))


def test_down_stops_watch_with_exit_zero(tmp_path):
    clock, lines = Clock(), []
    script = Script([healthy()], down_after=3)
    w = watcher(tmp_path, script, FakeUp(clock), clock, lines)
    assert w.run() == 0
    assert events_of(tmp_path)[-1]["detail"].startswith("the stack was brought down")


def test_a_process_that_ends_between_checks_cuts_the_wait_short_and_its_model_is_called(tmp_path):
    clock, lines = Clock(), []
    script = Script([healthy()], stop_after=4)
    dies_at = {}

    def survey(*args):
        result = script(*args)
        result.processes = {"server": (procs.Seen(1, 1.0),), "emb": (procs.Seen(2, 2.0),)}
        dies_at.setdefault("emb", clock.now + 7.5)  # 7.5 s into the 30 s wait after the first check
        return result

    w = watcher(tmp_path, survey, FakeUp(clock), clock, lines, interval=30)
    w.still = lambda seen: not (seen.pid == 2 and clock.now >= dies_at["emb"])
    checked_at = []
    w.survey_fn = lambda *args: (checked_at.append(clock.now), survey(*args))[1]
    w.run()
    first, second = checked_at[0], checked_at[1]
    assert second - first == pytest.approx(8 + SETTLE_S, abs=0.05)  # the 1 s look after 8 s, then the settle
    assert "emb" in script.calls[1]  # the model whose process ended is called, not just listed
    ended = next(e for e in events_of(tmp_path) if e["event"] == "ended")
    assert ended["subject"] == "emb" and ended["pids"] == [2]


def test_the_processes_watched_between_checks_are_the_server_and_its_models(reaper):
    pytest.importorskip("setproctitle")  # what xinference names its model processes with
    pids = reaper / "pids"
    child = (f"import os, setproctitle, time; setproctitle.setproctitle('Model: emb-rep0'); "
             f"open('{pids}', 'a').write(f'{{os.getpid()}}\\n'); time.sleep(120)")
    leader_code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)"
    leader = subprocess.Popen([sys.executable, "-c", leader_code, str(reaper)], start_new_session=True)
    try:
        record = leader_record(leader, pids)
        found = checks.processes(record, {"emb", "rr"})
        assert set(found) == {"server", "emb"} and [s.pid for s in found["server"]] == [leader.pid]
        [model] = found["emb"]
        assert psutil.Process(model.pid).ppid() == leader.pid
        assert checks.processes(ServerRecord(url=URL, managed=False), {"emb"}) == {}  # not ours: none watched
    finally:
        os.killpg(leader.pid, signal.SIGKILL)  # the stand-ins' own group (the retitled child included)
        leader.wait()


def test_a_down_that_finishes_while_a_round_looks_is_not_undone(tmp_path):
    """The round saw models vanish (down was terminating them); by the time the repair is due, down has written
    its state: watch stops instead of bringing the stack back."""
    clock, lines = Clock(), []
    script = Script([healthy(), {**healthy(), "emb": bad("emb")}])
    up = FakeUp(clock)
    w = watcher(tmp_path, script, up, clock, lines)

    def down_meanwhile(*args):
        state_with(tmp_path, None, ModelRecord("embedding", "emb", "embedding", "terminated"))
        return script(*args)

    w.survey_fn = lambda *args: down_meanwhile(*args) if len(script.calls) >= 1 else script(*args)
    assert w.run() == 0
    assert len(up.calls) == 1  # only the first `up`
    assert events_of(tmp_path)[-1]["detail"].startswith("the stack was brought down")


def test_sigterm_while_sleeping_is_exit_zero_and_says_the_stack_is_left_running(tmp_path):
    clock, lines = Clock(), []
    stops = StopSignals()
    w = watcher(tmp_path, Script([healthy()]), FakeUp(clock), clock, lines)

    def sleep(seconds):
        stops.received = "SIGTERM"
        raise KeyboardInterrupt()

    w.sleep = sleep
    assert w.run(stops) == 0
    stop = events_of(tmp_path)[-1]
    assert stop["event"] == "stop" and stop["signal"] == "SIGTERM" and "left running" in stop["detail"]


def test_a_real_sigterm_in_the_middle_of_a_repair_ends_the_loop(tmp_path):
    """The signal handler itself, in this process: SIGTERM arrives while `up` works."""
    lines = []
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    started = threading.Event()

    def slow_up(path, state_dir, console=None):
        started.set()
        time.sleep(30)  # interrupted by the signal
        raise AssertionError("not interrupted")

    def send():
        started.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    log = EventLog(lines.append, str(tmp_path / "watch.jsonl"))
    w = Watcher(str(path), StateDir(tmp_path / "state"), log, _Silent(), up=slow_up, survey=Script([healthy()]))
    threading.Thread(target=send, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stops:
        code = w.run(stops)  # slow_up fails the test if the signal does not cut it short
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    assert "during a repair" in events_of(tmp_path)[-1]["detail"]


def test_up_summary_names_what_each_model_got():
    class Step:
        def __init__(self, uid, action):
            self.uid, self.action = uid, action

    class Plan:
        server = "start"
        steps = [Step("emb", "launch"), Step("rr", "keep"), Step("chat", "launch")]

    from provision.state import AttemptRecord

    emb = ModelRecord("embedding", "emb", "embedding", "running", candidate="primary", engine="sentence_transformers",
                      attempts=[AttemptRecord("primary", "bge", "sentence_transformers", "ready", seconds=12.3)])
    chat = ModelRecord("chat", "chat", "LLM", "failed")

    class Result:
        plan = Plan
        timings = {"serve": 30.5}
        state = State(manifest="m", name="t", models=[emb, chat])

    assert up_summary(Result) == ("server started (30.5 s), emb launched (primary, sentence_transformers, 12.3 s), "
                                  "rr kept, chat failed")


# -- the checks, against canned answers -----------------------------------------------------------------

def ours() -> ServerRecord:
    """A managed server record whose identity is this test process: alive, and ours."""
    me = psutil.Process()
    return ServerRecord(url=URL, managed=True, host="127.0.0.1", port=9997, pid=me.pid, pgid=me.pid,
                        cmdline=me.cmdline(), create_time=me.create_time(), auth=False)


def state_with(tmp_path, server: ServerRecord | None, *models: ModelRecord) -> StateDir:
    state_dir = StateDir(tmp_path / "state")
    state_dir.write(State(manifest="m.yml", name="t", server=server, models=list(models)))
    return state_dir


def running(uid: str, role: str = "embedding", **kw) -> ModelRecord:
    return ModelRecord(role=role, uid=uid, model_type=role, status="running", candidate="primary",
                       name="bge-small-en-v1.5" if role == "embedding" else "bge-reranker-base", **kw)


def survey_of(tmp_path, state_dir, call=frozenset()):
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    manifest = parse(MANIFEST, environ={})
    result = checks.survey(state_dir, manifest, str(path), checks.digest(path), set(call))
    return result, {f.subject: f for f in result.findings}


def listing(*uids):
    responses.get(f"{URL}/v1/models", json={"object": "list", "data": [{"id": u} for u in uids]})


def instance(uid, status, replicas=("READY",)):
    responses.get(f"{URL}/v1/models/instances", json=[{"model_uid": uid, "status": status,
                                                       "replica_statuses": [{"status": r} for r in replicas]}],
                  match=[responses.matchers.query_param_matcher({"model_uid": uid})])


@responses.activate
def test_a_healthy_stack_is_healthy(tmp_path):
    state_dir = state_with(tmp_path, ours(), running("emb"), running("rr", "rerank"))
    listing("emb", "rr")
    instance("emb", "READY")
    instance("rr", "READY")
    result, found = survey_of(tmp_path, state_dir)
    assert result.healthy and result.server_pid == os.getpid(), result.findings


@responses.activate
def test_a_dead_model_that_xinference_recreates_is_deferred_by_its_launch_time(tmp_path):
    state_dir = state_with(tmp_path, ours(), running("emb", ready_seconds=12.0), running("rr", "rerank"))
    listing("rr")  # emb dropped out of the listing 2.7 s after its process died
    instance("emb", "ERROR", ["TERMINATING"])
    instance("rr", "READY")
    result, found = survey_of(tmp_path, state_dir)
    emb = found["emb"]
    assert not emb.ok and emb.defer_s == 2 * 12.0 + 60 and "ERROR (replicas TERMINATING)" in emb.reason
    assert found["rr"].ok and found["server"].ok


@responses.activate
def test_a_model_the_server_dropped_is_a_drift_to_repair_at_once(tmp_path):
    state_dir = state_with(tmp_path, ours(), running("emb"), running("rr", "rerank"))
    listing("rr")
    responses.get(f"{URL}/v1/models/instances", json=[], match=[responses.matchers.query_param_matcher({"model_uid": "emb"})])
    instance("rr", "READY")
    _, found = survey_of(tmp_path, state_dir)
    assert (found["emb"].ok, found["emb"].reason, found["emb"].defer_s, found["emb"].confirm) == (
        False, "the server no longer runs it", 0.0, False)


@responses.activate
def test_a_model_still_listed_without_an_instance_was_dropped_a_moment_ago(tmp_path):
    state_dir = state_with(tmp_path, ours(), running("emb"), running("rr", "rerank"))
    listing("emb", "rr")  # the listing lags the eviction by 2 s
    responses.get(f"{URL}/v1/models/instances", json=[], match=[responses.matchers.query_param_matcher({"model_uid": "emb"})])
    instance("rr", "READY")
    _, found = survey_of(tmp_path, state_dir)
    assert not found["emb"].ok and not found["emb"].confirm and "no instance" in found["emb"].reason


@responses.activate
def test_a_failed_call_is_a_drift_that_asks_for_a_second_look(tmp_path):
    state_dir = state_with(tmp_path, ours(), running("emb"), running("rr", "rerank"))
    listing("emb", "rr")
    instance("emb", "READY")
    instance("rr", "READY")
    responses.post(f"{URL}/v1/embeddings", status=500, json={"detail": "Remote server 127.0.0.1:39759 closed"})
    _, found = survey_of(tmp_path, state_dir, call={"emb"})
    assert not found["emb"].ok and found["emb"].confirm and found["emb"].reason.startswith("its call failed")
    assert found["rr"].ok  # not called this round


def test_a_server_whose_process_is_gone_takes_its_models_with_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    record = ServerRecord(url=URL, managed=True, pid=child.pid, pgid=child.pid, cmdline=["xinference-local"],
                          create_time=1.0)
    state_dir = state_with(tmp_path, record, running("emb"), running("rr", "rerank"))
    result, found = survey_of(tmp_path, state_dir)
    assert found["server"].reason == f"its process (pid {child.pid}) is gone"
    assert not found["server"].confirm
    assert found["emb"].reason == "its server is down" and not result.brought_down


def test_the_state_down_leaves_is_seen_as_brought_down(tmp_path):
    down = [ModelRecord("embedding", "emb", "embedding", "terminated")]
    state_dir = state_with(tmp_path, None, *down)
    result, _ = survey_of(tmp_path, state_dir)
    assert result.brought_down


def test_a_changed_manifest_is_a_drift(tmp_path):
    state_dir = state_with(tmp_path, None)
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    result = checks.survey(state_dir, parse(MANIFEST, environ={}), str(path), "an older digest")
    assert {f.subject: f.ok for f in result.findings}["manifest"] is False


# -- the command ----------------------------------------------------------------------------------------

def test_a_second_watch_on_one_state_folder_fails_at_once_naming_the_first(tmp_path, invoke):
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    state_dir = StateDir(tmp_path / "state")
    with state_dir.lock("watch", name="watch.lock"):  # what the first watch holds for its lifetime
        result = invoke(["--state-dir", state_dir.path, "watch", path, "--interval", "5"])
    assert result.exit_code == 2, result.output
    assert f"in use by `provision watch` (pid {os.getpid()})" in result.stderr
    assert "one `provision watch` per state folder" in result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--interval", "0"], "Invalid value for '--interval'"),
    (["--json-log", "/no/such/folder/w.jsonl"], "--json-log /no/such/folder/w.jsonl"),
])
def test_bad_options_are_clear_errors(tmp_path, invoke, args, fragment):
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST)
    result = invoke(["--state-dir", tmp_path / "state", "watch", path, *args])
    assert result.exit_code == 2 and fragment in result.stderr + result.output
    assert "Traceback" not in result.stderr + result.output


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_the_real_command_stops_on_a_signal_with_its_exit_code(tmp_path, signum, code):
    """`provision watch` as a process, on a server.endpoint that does not answer: its `up` fails, it backs off and
    sleeps; the signal ends it at once, with the log saying so."""
    dead = free_port()
    path = tmp_path / "m.yml"
    path.write_text(MANIFEST.replace("server: {host: 127.0.0.1, port: 9997, auth: false}",
                                     f"server: {{endpoint: 'http://127.0.0.1:{dead}'}}"))
    log = tmp_path / "w.jsonl"
    proc = subprocess.Popen([*PROVISION, "--state-dir", str(tmp_path / "state"), "watch", str(path), "--interval", "2",
                             "--json-log", str(log)], env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and '"repair_failed"' in log.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "watch did not get through its first `up`"
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["event"] == "stop" and last["signal"] == signal.Signals(signum).name
    assert "does not answer" in err and "next try in" in err
    with StateDir(tmp_path / "state").lock("watch", name="watch.lock"):  # the lock went with the process
        pass


# -- `up` after a server was SIGKILLed: what it left is stopped first -------------------------------------

def test_up_stops_what_a_killed_server_left_in_its_group_before_it_starts_another(reaper):
    """xinference-local SIGKILLed leaves its actor pool and model processes running in its group (measured:
    test_watch_e2e.py); a stand-in leader with one child plays that here."""
    from types import SimpleNamespace

    from provision.apply.serve import _stop_leftovers

    pids = reaper / "pids"
    child = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', "
             f"'{reaper}']); open('{pids}', 'a').write(f'{{c.pid}}\\n'); time.sleep(120)")
    leader = subprocess.Popen([sys.executable, "-c", child, str(reaper)], start_new_session=True)
    record = leader_record(leader, pids)
    [orphan] = [int(p) for p in pids.read_text().split()]
    leader.kill()
    leader.wait()
    assert psutil.pid_exists(orphan)
    lines = []
    _stop_leftovers(SimpleNamespace(previous_server=record, console=SimpleNamespace(line=lines.append)))
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert lines == [f"[server] the earlier server (pid {leader.pid}) is gone: not running; stopped 1 leftover "
                     f"process of its group (pid {orphan})"]


def test_the_plan_says_the_earlier_server_is_gone():
    from provision.observe import Observed
    from provision.plan import make_plan

    m = parse(MANIFEST, environ={})
    gone = ServerRecord(url=URL, managed=True, pid=4242)
    plan = make_plan(m, Observed(previous=State(manifest="m", name="t", server=gone), gpus=[]))
    assert plan.server == "start"
    assert plan.server_reason == "the server provision started earlier (pid 4242) is gone: start xinference-local on 127.0.0.1:9997"


@responses.activate
def test_a_recreated_model_ready_before_the_listing_shows_it_is_still_left_to_xinference(tmp_path):
    """Seen in CI: Xinference's new instance is READY a few seconds before /v1/models lists it again. That is
    the end of its own recreation, not a drift to repair at once: the same grace as the ERROR it came from."""
    state_dir = state_with(tmp_path, ours(), running("emb", ready_seconds=12.0), running("rr", "rerank"))
    listing("rr")
    instance("emb", "READY")
    instance("rr", "READY")
    _, found = survey_of(tmp_path, state_dir)
    assert not found["emb"].ok and found["emb"].defer_s == 2 * 12.0 + 60
    ledger = Ledger()
    ledger.update([bad("emb", "its instance is ERROR", defer_s=84)], 0)
    ledger.update([found["emb"]], 9)  # READY, not listed: within the grace of the recreation
    assert ledger.due(12) == []
    events = ledger.update([good("emb")], 12)
    assert [e.event for e in events] == ["recovered"]
