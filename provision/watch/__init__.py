"""`provision watch`: `up` on a timer with backoff (loop.py), what is healthy (checks.py), when to repair
(policy.py), and the log (events.py)."""

from .loop import StopSignals, watch

__all__ = ["StopSignals", "watch"]
