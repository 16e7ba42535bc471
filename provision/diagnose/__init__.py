"""The checks of `provision doctor`, one module per kind of fact: packages (this Python's METADATA),
machine (GPUs, disk, ports), reach (the hub, the server's authentication), history (logs and attempts).
Each returns Findings (what / why / fix, severity ok | warning | blocker); commands/doctor.py runs them."""

from .findings import BLOCKER, OK, SEVERITIES, WARNING, Finding

__all__ = ["BLOCKER", "OK", "SEVERITIES", "WARNING", "Finding"]
