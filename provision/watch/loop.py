"""`provision watch`: `up` once, then check every interval and run `up` again when something drifted.

    lock (watch.lock, one watch per state folder) -> up -> loop: survey (checks.py) -> ledger (policy.py)
    -> repair = apply.up(), the same code path as `provision up` -> survey again -> rest

The rest until the next check looks every second at the processes the last survey saw (the server's, each
model's): a death shows within a second, whatever the interval, and the check that follows calls that model.

The repair is `up` itself: it keeps what runs and is unchanged, relaunches a model that is gone through its own
fallback chain, restarts a dead server (stopping what the dead one left) and relaunches its models. Backoff per
subject keeps a model that cannot come up from spinning. SIGTERM or Ctrl-C stops the loop wherever it is (a
sleep, a check, the middle of an `up`, which stops its launches and records what it started) and leaves the
stack running: exit 0 on SIGTERM, 130 on SIGINT. `provision down` stops the stack; watch sees that in the
state and stops too (exit 0), rather than bring back what a person just brought down.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from ..console import Console
from ..runtime import procs
from ..errors import EXIT_OK, ManifestError, ProvisionError, StateError, UsageError
from ..state import StateDir
from . import checks
from .events import OK_EVERY_S, EventLog
from .policy import Backoff, Event, Ledger

CALL_EVERY = 5  # a real call of each model every this many checks (and of a drifted one at every check)
RECHECK_S = 5.0  # while something drifted: look again this soon (the interval, when that is shorter)
PULSE_S = 1.0  # between checks: is each watched process still alive (a /proc read each, no request)
SETTLE_S = 1.0  # a process just died: the server's view of it settles this long before the check
EXIT_SIGINT = 130
DOWN = "the stack was brought down (`provision down`): watch stops too"


class StopSignals:
    """SIGTERM and SIGINT end the loop. The first one raises KeyboardInterrupt wherever the main thread is; later
    ones are only noted, so the cleanup they started (an `up` stopping its launches) is not cut short."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            raise KeyboardInterrupt()


class _LogConsole(Console):
    """`up`'s own lines inside the watch log, indented under the event that ran it; never a live display."""

    def line(self, text: str = "") -> None:
        super().line(f"    {text}" if text else text)


@dataclass
class Options:
    interval: float = 30.0
    call_every: int = CALL_EVERY
    recheck: float = RECHECK_S
    ok_every: float = OK_EVERY_S
    backoff: Backoff = Backoff()


class Watcher:
    def __init__(self, manifest_path: str, state_dir: StateDir, log: EventLog, console: Console,
                 options: Options | None = None, *, up: Callable | None = None, survey: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 still: Callable[[procs.Seen], bool] = procs.still):
        from ..apply import up as apply_up
        from ..manifest import load

        self.path, self.state_dir, self.log, self.console = manifest_path, state_dir, log, console
        self.options = options or Options()
        self.up = up or apply_up
        self.survey_fn = survey or checks.survey
        self.load = load
        self.clock, self.sleep, self.still = clock, sleep, still
        self.processes: dict[str, tuple[procs.Seen, ...]] = {}  # watched between checks (checks.processes)
        self.died: set[str] = set()  # subjects whose process the pulse saw end: called at the next check
        self.ledger = Ledger(self.options.backoff)
        self.manifest = load(manifest_path)  # a bad manifest is an error now, before anything runs
        self.applied: str | None = None  # the manifest's digest when the last `up` read it
        self.rounds = 0
        self.in_repair = False
        self.last_ok: float | None = None
        self.quiet_checks = 0  # checks since the last "ok" line

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stops: StopSignals | None = None) -> int:
        o = self.options
        self.log.emit("start", detail=f"{self.path} (state {self.state_dir.path}); a check every {o.interval:g} s, a "
                      f"call of each model every {o.call_every} checks", pid=os.getpid(), interval_s=o.interval)
        try:
            self._repair(first=True)
            while True:
                self._rest(self.ledger.next_wake(self.clock(), o.interval, min(o.recheck, o.interval)))
                survey = self._survey(self._to_call())
                if survey.brought_down:
                    self.log.emit("stop", detail=DOWN)
                    return EXIT_OK
                now = self.clock()
                self._emit(self.ledger.update(survey.findings, now))
                self._say_ok(survey, now)
                if self.ledger.due(now):
                    if checks.was_brought_down(self.state_dir):  # `down` finished while this round looked
                        self.log.emit("stop", detail=DOWN)
                        return EXIT_OK
                    self._repair()
        except KeyboardInterrupt:
            name = (stops.received if stops else None) or "SIGINT"
            during = " during a repair (what that `up` started is recorded)" if self.in_repair else ""
            self.log.emit("stop", detail=f"{name}{during}: what runs is left running; `provision down` stops it",
                          signal=name)
            return EXIT_OK if name == "SIGTERM" else EXIT_SIGINT

    def _rest(self, seconds: float) -> None:
        """Wait until the next check, looking every PULSE_S at the watched processes: one that ended cuts the
        wait short (after SETTLE_S, so the server has marked it), and the next check calls that model."""
        deadline = self.clock() + seconds
        while True:
            left = deadline - self.clock()
            if left <= 0:
                return
            self.sleep(min(PULSE_S, left))
            ended = {subject: [s.pid for s in seen if not self.still(s)] for subject, seen in self.processes.items()}
            ended = {subject: pids for subject, pids in ended.items() if pids}
            if ended:
                self.died |= set(ended)
                self.log.emit_many("ended", list(ended), "its process ended; checking now",
                                   [{"pids": pids} for pids in ended.values()])
                self.sleep(SETTLE_S)
                return

    def _to_call(self) -> set[str]:
        """Every model every `call_every` checks; a drifted one, or one whose process just ended, at every check
        (a failed call is confirmed)."""
        everyone = {m.uid for m in self.manifest.models}
        if self.rounds % self.options.call_every == 0:
            return everyone
        return ({t.subject for t in self.ledger.drifted() if t.kind == "model"} | self.died) & everyone

    def _survey(self, call: set[str]) -> checks.Survey:
        self.rounds += 1
        self.died = set()
        survey = self.survey_fn(self.state_dir, self.manifest, self.path, self.applied, call)
        self.processes = survey.processes
        return survey

    # -- repairs ------------------------------------------------------------------------------------

    def _repair(self, first: bool = False) -> None:
        """One `up`; then a check with calls of every model, and what came back or not."""
        now = self.clock()
        tried = self.ledger.started_repair(now)
        if first:
            self.log.emit("repair", detail="running `up` to bring the manifest up")
        else:
            reasons: dict[str, list[str]] = {}
            for t in tried:
                reasons.setdefault(t.reason, []).append(t.subject)
            again = [f"{t.subject} {t.attempts}" for t in tried if t.attempts > 1]  # since it was last stable
            self.log.emit("repair", ", ".join(t.subject for t in tried),
                          "running `up` (" + "; ".join(f"{', '.join(s)}: {r}" for r, s in reasons.items()) + ")"
                          + (f"; attempt {', '.join(again)}" if again else ""),
                          attempts={t.subject: t.attempts for t in tried})
        started, error = self.clock(), ""
        about_to_apply = checks.digest(self.path)
        self.in_repair = True
        try:
            result = self.up(self.path, self.state_dir, console=self.console)
        except (ManifestError, UsageError, StateError) as exc:
            if first:
                raise  # bad input or an unusable state folder: nothing to watch
            error = exc.message.splitlines()[0]
            self.log.emit("up", detail=f"failed: {error}", error=exc.to_json())
            if not isinstance(exc, ManifestError):
                self.applied = about_to_apply
        except ProvisionError as exc:  # it read the manifest and acted on it, up to what failed
            self.applied = about_to_apply
            error = exc.message.splitlines()[0]
            self.log.emit("up", detail=f"failed after {self.clock() - started:.1f} s: {error}", error=exc.to_json())
        else:
            self.applied = about_to_apply
            self.log.emit("up", detail=f"exit {result.exit_code} in {self.clock() - started:.1f} s: {up_summary(result)}",
                          exit_code=result.exit_code, timings=result.timings)
            self._reload()
        self.in_repair = False  # not on the way out of a signal: the stop line says it came during a repair
        survey = self._survey({m.uid for m in self.manifest.models})
        self._emit(self.ledger.after_repair(survey.findings, self.clock(), error, first=first))
        self.last_ok = None  # the next healthy check says so
        self._say_ok(survey, self.clock())

    def _reload(self) -> None:
        """`up` read the manifest anew: so does watch (its models, their launch timeouts)."""
        try:
            self.manifest = self.load(self.path)
        except ProvisionError:
            pass  # `up` just loaded it; a change in between is seen at the next check

    # -- the log ------------------------------------------------------------------------------------

    def _emit(self, events: list[Event]) -> None:
        """Events in order; a run of the same event with the same words (every model "its server is down") is
        one console line naming each subject."""
        groups: list[list[Event]] = []
        for e in events:
            if groups and (groups[-1][0].event, groups[-1][0].detail) == (e.event, e.detail):
                groups[-1].append(e)
            else:
                groups.append([e])
        for group in groups:
            self.log.emit_many(group[0].event, [e.subject for e in group], group[0].detail,
                               [{"kind": e.kind, **e.facts} for e in group])

    def _say_ok(self, survey: checks.Survey, now: float) -> None:
        if not survey.healthy:
            self.last_ok = None
            return
        self.quiet_checks += 1
        if self.last_ok is not None and now - self.last_ok < self.options.ok_every:
            return
        models = [f.subject for f in survey.findings if f.kind == "model"]
        called = ", ".join(f"{uid} {s:.2f} s" for uid, s in sorted(survey.called.items()))
        since = f"; {self.quiet_checks} checks since the last ok line" if self.last_ok is not None else ""
        self.log.emit("ok", detail=f"server pid {survey.server_pid} answering; {len(models)} model"
                      f"{'s' if len(models) != 1 else ''} ready ({', '.join(models)})"
                      + (f"; called: {called}" if called else "") + since,
                      server_pid=survey.server_pid, models=models, called=survey.called or None,
                      watching={subject: [s.pid for s in seen] for subject, seen in survey.processes.items()} or None)
        self.last_ok, self.quiet_checks = now, 0


def up_summary(result) -> str:
    """What an `up` did, in one line: the server, then each model."""
    server = {"start": "server started", "restart": "server restarted", "reuse": "server kept",
              "external": "external server"}.get(result.plan.server, result.plan.server)
    parts = [server + (f" ({result.timings['serve']:.1f} s)" if result.plan.server in ("start", "restart")
                       and "serve" in result.timings else "")]
    for step in result.plan.steps:
        record = result.state.model(step.uid)
        if step.action == "keep":
            parts.append(f"{step.uid} kept")
        elif step.action == "terminate":
            parts.append(f"{step.uid} terminated")
        elif record is not None and record.status == "running":
            won = next((a for a in record.attempts if a.outcome == "ready"), None)
            parts.append(f"{step.uid} launched ({record.candidate}, {record.engine}"
                         + (f", {won.seconds:.1f} s" if won else "") + ")")
        else:
            parts.append(f"{step.uid} failed")
    return ", ".join(parts)


def watch(manifest_path: str, state_dir: StateDir, *, interval: float = 30.0, json_log: str | None = None,
          console: Console | None = None, stops: StopSignals | None = None) -> int:
    """Run the loop until a signal (or `provision down`); returns the exit code."""
    console = console or Console()
    log = EventLog(console.line, json_log)
    try:
        watcher = Watcher(manifest_path, state_dir, log, _LogConsole(console.stream, live=False),
                          Options(interval=interval))
        with state_dir.lock("watch", name="watch.lock", busy=UsageError,
                            hint="one `provision watch` per state folder: stop that one first (kill -TERM PID, or "
                            "`systemctl stop` its unit), or give this one another --state-dir"):
            return watcher.run(stops)
    except KeyboardInterrupt:  # a signal before the loop began (while the manifest was read): nothing ran yet
        return EXIT_OK if stops is not None and stops.received == "SIGTERM" else EXIT_SIGINT
    finally:
        log.close()
