"""The plan: manifest + observed facts -> per model an action (keep, launch, relaunch, terminate) and a
reason, per candidate its weights, engine and memory verdicts. Pure: observe.py does the I/O.
"""

from .decide import chain_key, make_plan
from .model import KEEP, LAUNCH, RELAUNCH, TERMINATE, CandidateStep, ModelStep, Plan

__all__ = ["KEEP", "LAUNCH", "RELAUNCH", "TERMINATE", "CandidateStep", "ModelStep", "Plan", "chain_key", "make_plan"]
