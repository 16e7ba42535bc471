"""Launching models: the POST body, the fallback chain, what each failure means, the failure summary."""

from .chain import ChainResult, LaunchEvent, launch_chain
from .classify import Failure, FailureKind, Scope, classify
from .payload import launch_payload
from .summary import summarize_failure

__all__ = ["ChainResult", "Failure", "FailureKind", "LaunchEvent", "Scope", "classify", "launch_chain",
           "launch_payload", "summarize_failure"]
