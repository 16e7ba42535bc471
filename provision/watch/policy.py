"""When `watch` repairs: one track per subject (the server, each model, the manifest), exponential backoff
per drift, and a reset once the subject has stayed healthy. Pure: every time is passed in.

    drift found        -> due at once (or after `defer_until`, while Xinference repairs it itself; or at the
                          next check when the evidence may be transient: `confirm`)
    repair left it bad -> next try after base * factor**(n-1) s, capped: 5, 10, 20, 40 ... 300 s
    healthy again      -> "repaired in N s" (or "recovered": it came back without a repair)
    healthy for `stable` s -> the count starts again from 0, so a model that flaps keeps backing off

A repair is one `up`, which repairs every subject that drifted, so every drifted subject counts one more
attempt when it runs, due or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """What one check found about one subject."""

    subject: str  # "server", "manifest", or a model's uid
    ok: bool
    reason: str = ""  # why it is not healthy, in a few words a person reads
    defer_s: float = 0.0  # Xinference is repairing it itself: leave it this long after the drift began
    confirm: bool = False  # the evidence may be transient (a slow answer, a call that failed): act on a second look
    kind: str = "model"  # server | manifest | model
    facts: dict = field(default_factory=dict)  # for the JSON log: pid, latency_s, instance status ...


@dataclass(frozen=True)
class Backoff:
    base: float = 5.0
    factor: float = 2.0
    cap: float = 300.0
    stable: float = 300.0  # healthy this long after a repair: the next drift starts from the first delay again

    def delay(self, attempts: int) -> float:
        """The wait before the next repair after `attempts` repairs that did not last."""
        if attempts <= 0:
            return 0.0
        return min(self.cap, self.base * self.factor ** (attempts - 1))


@dataclass
class Track:
    """One subject's history: the drift it is in (if any) and the repairs since it was last stable."""

    subject: str
    kind: str = "model"
    attempts: int = 0  # repairs run while it drifted, since it was last healthy for `stable` s
    drift_since: float | None = None
    reason: str = ""
    seen: int = 0  # consecutive checks that found it unhealthy
    next_try: float = 0.0
    defer_until: float | None = None
    confirm: bool = False
    repaired_during: bool = False  # a repair ran during this drift
    healthy_since: float | None = None

    @property
    def drifted(self) -> bool:
        return self.drift_since is not None


@dataclass(frozen=True)
class Event:
    """Something the log says: drift | waiting | recovered | repaired | repair_failed | stable."""

    event: str
    subject: str
    detail: str
    kind: str = "model"
    facts: dict = field(default_factory=dict)


class Ledger:
    def __init__(self, backoff: Backoff | None = None):
        self.backoff = backoff or Backoff()
        self.tracks: dict[str, Track] = {}

    def track(self, subject: str, kind: str = "model") -> Track:
        if subject not in self.tracks:
            self.tracks[subject] = Track(subject, kind)
        return self.tracks[subject]

    # -- what a check found ---------------------------------------------------------------------------

    def update(self, findings: list[Finding], now: float) -> list[Event]:
        """Take one round of findings; returns what changed, for the log."""
        events = []
        for f in findings:
            t = self.track(f.subject, f.kind)
            if f.ok:
                events += self._healthy(t, now)
                continue
            new = not t.drifted
            if new:
                t.drift_since, t.seen, t.repaired_during = now, 0, False
                # A subject that flaps (healthy again, not yet for `stable` s) waits its backoff from the start.
                t.next_try = now + self.backoff.delay(t.attempts)
            t.seen += 1
            t.confirm = f.confirm
            t.defer_until = t.drift_since + f.defer_s if f.defer_s else None
            if new or f.reason != t.reason:
                facts = dict(f.facts)
                if t.defer_until is not None:
                    facts["wait_s"] = round(max(0.0, t.defer_until - now), 1)
                events.append(Event("drift" if new else "still", f.subject, f.reason, f.kind, facts))
                if t.defer_until is not None and t.defer_until > now:
                    events.append(Event("waiting", f.subject, f"Xinference is bringing it back itself; watch repairs it "
                                        f"if it is not back within {t.defer_until - now:.0f} s", f.kind))
            t.reason = f.reason
        return events

    def _healthy(self, t: Track, now: float) -> list[Event]:
        if t.drifted:
            took = now - t.drift_since
            event = Event("repaired" if t.repaired_during else "recovered", t.subject,
                          f"answering again after {took:.1f} s" + ("" if t.repaired_during else
                                                                     " (without a repair from watch)"),
                          t.kind, {"seconds": round(took, 1), "attempts": t.attempts})
            t.drift_since, t.seen, t.defer_until, t.confirm, t.reason = None, 0, None, False, ""
            t.healthy_since = now
            return [event]
        if t.healthy_since is None:
            t.healthy_since = now
        if t.attempts and now - t.healthy_since >= self.backoff.stable:
            t.attempts = 0
            return [Event("stable", t.subject, f"healthy for {self.backoff.stable:.0f} s: its backoff starts afresh",
                          t.kind)]
        return []

    # -- when to repair -------------------------------------------------------------------------------

    def due(self, now: float) -> list[Track]:
        """The drifted subjects whose repair is due now."""
        return [t for t in self.tracks.values() if t.drifted and self._due_at(t) <= now]

    def _due_at(self, t: Track) -> float:
        at = t.next_try
        if t.defer_until is not None:
            at = max(at, t.defer_until)
        if t.confirm and t.seen < 2:
            return float("inf")  # wait for the next check to agree
        return at

    def drifted(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.drifted]

    def next_wake(self, now: float, interval: float, recheck: float) -> float:
        """Seconds to sleep: the interval, or less while something drifted (the next due repair, or a quick
        second look at a drift that needs confirming or that Xinference is repairing)."""
        wake = interval
        for t in self.drifted():
            at = self._due_at(t)
            if at == float("inf") or (t.defer_until is not None and t.defer_until > now):
                wake = min(wake, recheck)
            else:
                wake = min(wake, max(0.0, at - now))
        return wake

    def started_repair(self, now: float) -> list[Track]:
        """A repair (one `up`) starts now: every drifted subject counts one more attempt."""
        drifted = self.drifted()
        for t in drifted:
            t.attempts += 1
            t.repaired_during = True
        return drifted

    def after_repair(self, findings: list[Finding], now: float, error: str = "", first: bool = False) -> list[Event]:
        """The check right after a repair: what came back (repaired), what did not (next try in N s). `first`: the
        `up` that watch starts with, which counts as the first attempt for whatever it left unhealthy."""
        events = self.update(findings, now)
        if first:
            self.started_repair(now)
        for t in self.drifted():
            if not t.repaired_during:
                continue
            wait = self.backoff.delay(t.attempts)
            t.next_try = now + wait
            why = error or t.reason  # `up` failed as a whole: its error is the reason for every subject
            events.append(Event("repair_failed", t.subject, f"{why}; next try in {wait:.0f} s", t.kind,
                                {"attempts": t.attempts, "next_try_s": wait}))
        return events
