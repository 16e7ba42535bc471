"""What a launch failure means, from Xinference's real error texts: one table of signatures, shared by
the fallback chain (which decides whether to go on) and by doctor (which explains a log).

Every failure has a kind (declared most specific first), a scope (the candidate, or the whole chain:
no candidate can help), a short reason without Xinference's "[address=..., pid=...]" prefix, and a hint.

    classify(status, detail, log_tail)  -> Failure        one launch failure (the chain)
    scan(text)                          -> list[Match]    every line a signature recognises (doctor)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..xinference import clean_detail

REASON_CHARS = 240  # a Failure's reason; summary lines cut to 160


class FailureKind(str, Enum):
    """Why a candidate failed. Declared most specific first: the summary leads with the earliest kind
    among the attempts (a refused key explains every attempt; a timeout or unknown error, least)."""

    AUTH = "auth", "credentials refused"
    OOM = "oom", "out of memory"
    BAD_PATH = "bad_path", "bad model folder"
    DAMAGED_WEIGHTS = "damaged_weights", "weights cannot be loaded"
    WEIGHTS_MISMATCH = "weights_mismatch", "weights are not the named model"
    ENGINE_MISSING = "engine_missing", "engine not installed"
    MODEL_NOT_FOUND = "model_not_found", "model not found"
    ENGINE_UNSUPPORTED = "engine_unsupported", "engine cannot run the model"
    VENV_FAILED = "venv_failed", "virtualenv install failed"
    UID_IN_USE = "uid_in_use", "uid already in use"
    NO_SLOT = "no_slot", "no free slot"
    MODEL_GONE = "model_gone", "model is not running"
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


@dataclass(frozen=True)
class Signature:
    """One known error text: what it is called, what it means (kind) and what to do (hint)."""

    name: str  # a few words, e.g. "CUDA out of memory"
    kind: FailureKind
    pattern: re.Pattern
    hint: str | None


# The one table of Xinference's (and its engines') error texts, used by classify() for a launch and by
# `provision doctor` for a log. First match wins: order matters where texts overlap (a bad model_path is
# an "Invalid input", a failed uv install may mention a missing module, vLLM's import error is an import
# error, a broken torchvision surfaces inside an engine's import).
SIGNATURES: list[Signature] = [
    Signature("uid in use", FailureKind.UID_IN_USE, re.compile(r"already in the model list"),
              "another launch holds this uid: `provision down`, or give the model another uid"),
    Signature("model not running", FailureKind.MODEL_GONE, re.compile(r"Model not found in the model list"),
              "the model is not running (terminated, its process died, or the server restarted): "
              "`provision up` launches it again"),
    Signature("bad model folder", FailureKind.BAD_PATH,
              re.compile(r"File or directory does not exist|Error no file named", re.I),
              "check local_path, or that the download finished"),
    Signature("damaged weights", FailureKind.DAMAGED_WEIGHTS,
              re.compile(r"Error while deserializing header|HeaderTooLarge|header too large|SafetensorError|"
                         r"PytorchStreamReader failed|Unable to load weights from|invalid load key", re.I),
              "the weight files are damaged: `provision up MANIFEST --refetch UID` checks them against the hub and "
              "fetches them again"),
    Signature("virtualenv install failed", FailureKind.VENV_FAILED,
              re.compile(r"\buv\b.*\bpip\b.*\binstall\b.*returned non-zero exit status", re.S),
              "the per-model virtualenv could not install the engine: set server.virtual_env: false or check the "
              "network"),
    Signature("xoscar missing in a virtualenv", FailureKind.VENV_FAILED, re.compile(r"No module named '?xoscar"),
              "the model ran in a per-model virtualenv that lacks Xinference's own packages: set "
              "server.virtual_env: false (the engines are then taken from the server's Python)"),
    Signature("torch and torchvision do not match", FailureKind.ENGINE_MISSING,
              re.compile(r"operator torchvision::nms does not exist|torchvision::nms"),
              "torchvision was built for another torch (a PyPI torchvision next to a CPU torch): "
              "`pip uninstall torchvision`, or install the one from the same index as torch"),
    Signature("vLLM cannot be imported", FailureKind.ENGINE_MISSING,
              re.compile(r"Failed to import (?:module )?'?vllm\b|No module named '?vllm\b", re.I),
              "vLLM is missing from the server's Python or was built for another torch (`provision doctor` "
              "compares them); install vllm for this torch, or let the chain fall back to another engine"),
    Signature("engine not installed", FailureKind.ENGINE_MISSING,
              re.compile(r"Failed to import|No module named|library is not installed|"
                         r"Please make sure '[^']+' is installed"),
              "install the engine into the server's Python, or pick another engine"),
    Signature("engine cannot run the model", FailureKind.ENGINE_UNSUPPORTED, re.compile(r"cannot be run on engine"),
              "Xinference says this also when the engine is not installed; GET /v1/engines/<type>/<name> tells "
              "which"),
    Signature("model not found", FailureKind.MODEL_NOT_FOUND,
              re.compile(r"Model not found, name:|\b(?:Rerank|Embedding|Image|Audio|Video) model \S+ not found"),
              "check name, size_in_billions, format and quantization against Xinference's built-in models"),
    Signature("GPU memory held by others", FailureKind.OOM,
              re.compile(r"Free memory on device|less than desired GPU memory utilization"), _OOM_FREE),
    Signature("no memory for the KV cache", FailureKind.OOM,
              re.compile(r"No available memory for the cache blocks|KV cache is needed|"
                         r"larger than the available KV cache memory"), _OOM_KV),
    Signature("CUDA out of memory", FailureKind.OOM, re.compile(r"CUDA out of memory|OutOfMemoryError"), _OOM_TORCH),
    Signature("no free slot", FailureKind.NO_SLOT,
              re.compile(r"No available slot|No available worker found|Requested GPUs exceed"),
              "the GPUs are taken: stop another model, or set gpu_idx / n_gpu"),
    Signature("server not answering", FailureKind.SERVER_DIED,
              re.compile(r"cannot reach the Xinference server|Connection refused|Connection aborted|"
                         r"RemoteDisconnected", re.I), None),
]
# vLLM V1 only says this; the real cause is in the server log above it.
_SEE_LOG = re.compile(r"Engine core initialization failed|See root cause above")
_EXCEPTION_TEXT = re.compile(r"\b\w*(?:Error|Exception): .*")


def classify(status: int | None, detail: str, log_tail: str = "") -> Failure:
    """What a launch failure means, from its HTTP status and Xinference's error text."""
    reason = short(clean_detail(detail))
    if status in (401, 403):
        return Failure(FailureKind.AUTH, Scope.CHAIN, reason or f"HTTP {status}",
                       "the server has authentication on; give provision an API key")
    for sig in SIGNATURES:
        if sig.pattern.search(detail) and (sig.kind is not FailureKind.SERVER_DIED or status is None):
            scope = Scope.CHAIN if sig.kind is FailureKind.SERVER_DIED else Scope.CANDIDATE
            return Failure(sig.kind, scope, reason, sig.hint)
    if log_tail and needs_log(detail):
        found = _from_log(log_tail)
        if found is not None:
            return found
    hint = "vLLM logs the real cause just above this line in the server log" if _SEE_LOG.search(detail) else None
    return Failure(FailureKind.UNKNOWN, Scope.CANDIDATE, reason or "no error message; see the server log", hint)


def _from_log(log_tail: str) -> Failure | None:
    """The last log line a signature recognises (a log line is no live server: SERVER_DIED is left out)."""
    found = scan(log_tail)
    if not found:
        return None
    last = found[-1]
    return Failure(last.signature.kind, Scope.CANDIDATE, short("server log: " + last.excerpt), last.signature.hint)


@dataclass(frozen=True)
class Match:
    """A line of a text that a signature recognises."""

    line: int  # 1-based
    signature: Signature
    excerpt: str  # the exception text of the line (or the line), without the worker prefix

    def to_json(self) -> dict:
        return {"line": self.line, "signature": self.signature.name, "kind": self.signature.kind.value,
                "excerpt": self.excerpt, "hint": self.signature.hint}


def scan(text: str, *, first_line: int = 1) -> list[Match]:
    """Every line of `text` a signature recognises (the first signature that matches it), in order.

    A log records what happened, not a live server: "server not answering" is not looked for.
    """
    found = []
    for number, line in enumerate(text.splitlines(), start=first_line):
        sig = match_line(line)
        if sig is not None:
            exception = _EXCEPTION_TEXT.search(line)
            found.append(Match(number, sig, short(clean_detail(exception.group(0) if exception else line.strip()))))
    return found


def match_line(line: str) -> Signature | None:
    """The first signature (not "server not answering") that recognises one line, or None."""
    for sig in SIGNATURES:
        if sig.kind is not FailureKind.SERVER_DIED and sig.pattern.search(line):
            return sig
    return None


def needs_log(detail: str) -> bool:
    return not detail.strip() or bool(_SEE_LOG.search(detail))


def short(text: str, limit: int = REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def failure_kind(value: str) -> FailureKind:
    try:
        return FailureKind(value)
    except ValueError:  # a state file may hold a kind this version does not know
        return FailureKind.UNKNOWN

