"""Check each running model by calling it with the request shapes RAGFlow itself sends.

A READY launch is not proof that a model works: Xinference does not validate the architecture, so
weights launched under the wrong built-in name come up READY and fail on first use (chat: HTTP 500
"The chat completion request failed"). Only calling the endpoint tells.

    verify_all(client, records)   -> one CheckResult per record (models that did not launch: not checked)
    verify_model(client, record)  -> dispatch on record.role: chat / embedding / rerank
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import requests

from .errors import AuthError, VerifyError, XinferenceError
from .state import ModelRecord
from .xinference import XinferenceClient

# Seconds per check. CPU is slow and the first call of a model can load lazily; chat generates tokens.
CHECK_TIMEOUT_S = {"chat": 120.0, "embedding": 60.0, "rerank": 60.0}

# Two clearly different texts, plus the text RAGFlow embeds when a model is added. RAGFlow uses the
# OpenAI SDK's embeddings.create with a batch (of up to 16).
EMBED_INPUTS = [
    "The cat slept all afternoon on the warm windowsill.",
    "Quarterly revenue rose twelve percent on strong cloud sales.",
    "Test if the api key is available",
]

RERANK_QUERY = "What do giant pandas eat?"
RERANK_DOCUMENTS = [
    "Giant pandas eat bamboo almost exclusively, up to 38 kg a day.",
    "Paris is the capital and largest city of France.",
    "Photosynthesis turns light into chemical energy in plants.",
    "The stock market closed higher on Friday.",
]

CHAT_PROBE = "Hello! How are you doing!"  # RAGFlow's own probe when a chat model is added
CHAT_MAX_TOKENS = 16
GONE = {"not running", "not serving"}  # diagnoses of a model that is not there to answer


@dataclass
class CheckResult:
    role: str
    uid: str
    ok: bool
    message: str
    latency_s: float | None = None
    detail: str = ""  # one short line: "384-dim vectors", "4 docs scored", "27 chars"
    hint: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # the same, structured: vector_size, docs_scored, ...
    checked: bool = True  # False: the model did not launch (or was terminated), nothing was called
    diagnosis: str = ""  # a few words on a failure: "not running", "not serving", "fails on use", ...

    @property
    def model_gone(self) -> bool:
        """The call says the model is not there to serve (its process died, the server lost it): relaunch."""
        return not self.ok and self.diagnosis in GONE

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("failed" if self.checked else "not checked")

    def to_json(self) -> dict:
        return {**asdict(self), "status": self.status}


def not_checked(record: ModelRecord, reason: str) -> CheckResult:
    """A model that was not called (it did not launch, or was terminated)."""
    return CheckResult(record.role, record.uid, ok=False, checked=False,
                       message=f"{record.role} {record.uid}: not checked, {reason}")


# -- entry points -----------------------------------------------------------------------------------


def verify_all(client: XinferenceClient, records: list[ModelRecord], *, parallel: bool = True) -> list[CheckResult]:
    """Check every running model (in parallel by default); the others are reported as not checked.

    Results come back in the order of `records`.
    """
    results: list[CheckResult | None] = [None] * len(records)
    to_check = []
    for index, record in enumerate(records):
        if record.status == "running":
            to_check.append(index)
        else:
            why = f": {record.error}" if record.error else ""
            results[index] = not_checked(record, f"the model is {record.status}{why}")
    if parallel and len(to_check) > 1:
        with ThreadPoolExecutor(max_workers=len(to_check), thread_name_prefix="verify") as pool:
            futures = {i: pool.submit(verify_model, client, records[i]) for i in to_check}
            for index, future in futures.items():
                results[index] = future.result()
    else:
        for index in to_check:
            results[index] = verify_model(client, records[index])
    return [r for r in results if r is not None]


def verify_model(client: XinferenceClient, record: ModelRecord) -> CheckResult:
    """Call the model once as RAGFlow would and check the answer's shape; never raises for a bad model."""
    check = _CHECKS.get(record.role)
    if check is None:
        return CheckResult(record.role, record.uid, ok=False, message=f"{record.role} {record.uid}: unknown role")
    started = time.monotonic()
    try:
        message, latency, facts = check(client, record)
    except VerifyError as exc:
        return CheckResult(record.role, record.uid, ok=False, message=f"{record.role} {record.uid}: {exc.message}",
                           latency_s=time.monotonic() - started, hint=exc.hint)
    except XinferenceError as exc:
        summary, hint = _diagnose(exc, record)
        return CheckResult(record.role, record.uid, ok=False,
                           message=f"{record.role} {record.uid}: {summary + '; ' if summary else ''}{exc.message}",
                           latency_s=time.monotonic() - started, hint=hint,
                           facts={"http_status": exc.status} if exc.status else {}, diagnosis=summary)
    return CheckResult(record.role, record.uid, ok=True, message=f"{record.role} {record.uid}: {message}",
                       latency_s=latency, detail=facts.pop("summary"), facts=facts)


def _diagnose(exc: XinferenceError, record: ModelRecord) -> tuple[str, str | None]:
    """The common failures as (a few words for the message, what a person should do next)."""
    detail = exc.detail.lower()
    if isinstance(exc, AuthError):
        return "refused", exc.hint
    if exc.status is None:
        if isinstance(exc.__cause__, requests.ConnectionError):
            return "server down", ("the Xinference server is down (connection refused): "
                                   "see `provision status`, then run `provision up`")
        return "no answer in time", "a first call on CPU can be slow; run `provision verify` again"
    if exc.status == 404 or "model not found in the model list" in detail:
        cached = " (Xinference caches this answer for 10 s)" if "cached" in detail else ""
        return "not running", ("the model is not running (was it terminated, or the server restarted?): "
                               f"run `provision up` again{cached}")
    if exc.status == 503:
        return "still loading", "the model is still loading: wait a little and run `provision verify` again"
    if "stopping state" in detail or "is not ready" in detail or "restarting" in detail:
        return "not serving", ("the model's process is stopping or restarting (did it die?): run `provision verify` "
                               "again in a few seconds, or `provision up`, which relaunches it")
    if exc.status == 500:
        name = f"`{record.name}`" if record.name else "its name"
        return "fails on use", (f"the model launched but fails on use: is {name} the right Xinference built-in "
                                "model for these weights? The server log has the traceback")
    return "", None


# -- the three checks: each returns (message, latency_s, facts with a "summary") or raises VerifyError


def _check_embedding(client: XinferenceClient, record: ModelRecord) -> tuple[str, float, dict]:
    body, latency = client.timed_post("/v1/embeddings", {"model": record.uid, "input": EMBED_INPUTS},
                                      timeout=CHECK_TIMEOUT_S["embedding"])
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise VerifyError("the answer has no vectors (`data` is missing or empty)")
    if len(data) != len(EMBED_INPUTS):
        raise VerifyError(f"sent {len(EMBED_INPUTS)} texts, got {len(data)} vectors")
    indices = sorted(item.get("index") for item in data if isinstance(item, dict) and isinstance(item.get("index"), int))
    if indices != list(range(len(EMBED_INPUTS))):
        raise VerifyError(f"vector indices are {indices}, expected 0..{len(EMBED_INPUTS) - 1} once each")
    vectors = [item.get("embedding") for item in sorted(data, key=lambda item: item["index"])]
    for index, vector in enumerate(vectors):
        if not isinstance(vector, list) or not vector:
            raise VerifyError(f"vector {index} is empty or not a list of numbers")
        if not all(_is_finite_number(x) for x in vector):
            raise VerifyError(f"vector {index} holds NaN, infinite or non-numeric values")
    sizes = sorted({len(v) for v in vectors})
    if len(sizes) != 1:
        raise VerifyError(f"vectors differ in length ({', '.join(map(str, sizes))}): one model must give one size")
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            if max(abs(a - b) for a, b in zip(vectors[i], vectors[j])) <= 1e-9:
                raise VerifyError(f"different texts {i} and {j} gave identical vectors: the model is not embedding",
                                  hint="is the model's name the right Xinference built-in model for these weights?")
    size = sizes[0]
    if record.dimensions and record.dimensions != size:
        raise VerifyError(f"vectors have {size} dimensions, Xinference reported {record.dimensions}")
    return (f"{len(vectors)} vectors of size {size}", latency,
            {"summary": f"{size}-dim vectors", "vector_size": size, "vectors": len(vectors)})


def _check_rerank(client: XinferenceClient, record: ModelRecord) -> tuple[str, float, dict]:
    # RAGFlow's exact payload (XInferenceRerank): the booleans are strings and there is no top_n.
    payload = {"model": record.uid, "query": RERANK_QUERY, "return_documents": "true", "return_len": "true",
               "documents": RERANK_DOCUMENTS}
    body, latency = client.timed_post("/v1/rerank", payload, timeout=CHECK_TIMEOUT_S["rerank"])
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise VerifyError("the answer has no `results` list: RAGFlow would fail with the misleading "
                          "'Xinference dose not support this model'")
    n = len(RERANK_DOCUMENTS)
    seen: set[int] = set()
    scores = []
    for position, item in enumerate(results):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise VerifyError(f"result {position} has index {index!r}, expected 0..{n - 1}")
        if index in seen:
            raise VerifyError(f"document {index} is scored more than once")
        seen.add(index)
        score = item.get("relevance_score")
        if not _is_finite_number(score):
            raise VerifyError(f"document {index} has relevance_score {score!r}, not a finite number")
        scores.append(score)
    if len(seen) != n:
        missing = sorted(set(range(n)) - seen)
        raise VerifyError(f"sent {n} documents, {len(seen)} scored (missing {missing})")
    if any(a < b for a, b in zip(scores, scores[1:])):
        raise VerifyError("results are not sorted by relevance_score, highest first")
    top = results[0]["index"]
    return (f"{n} documents scored, top is document {top}", latency,
            {"summary": f"{n} docs scored", "docs_scored": n, "top_index": top, "top_score": scores[0]})


def _check_chat(client: XinferenceClient, record: ModelRecord) -> tuple[str, float, dict]:
    payload = {"model": record.uid, "messages": [{"role": "user", "content": CHAT_PROBE}],
               "max_tokens": CHAT_MAX_TOKENS}
    body, latency = client.timed_post("/v1/chat/completions", payload, timeout=CHECK_TIMEOUT_S["chat"])
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise VerifyError("the answer has no `choices`")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise VerifyError("the first choice has no `message`")
    if message.get("role") != "assistant":
        raise VerifyError(f"the reply's role is {message.get('role')!r}, expected 'assistant'")
    content = message.get("content")
    facts = {"finish_reason": choices[0].get("finish_reason")}
    if isinstance(content, str) and content.strip():
        return (f"replied with {len(content)} characters", latency,
                {**facts, "summary": f"{len(content)} chars", "reply_chars": len(content)})
    # A thinking model can spend 16 tokens inside its reasoning: it works, RAGFlow would get an answer.
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip():
        return (f"replied with {len(reasoning)} characters of reasoning (no answer within {CHAT_MAX_TOKENS} tokens)",
                latency, {**facts, "summary": f"{len(reasoning)} chars of reasoning", "reply_chars": 0,
                          "reasoning_chars": len(reasoning)})
    raise VerifyError("the assistant's reply is empty")


_CHECKS: dict[str, Callable[[XinferenceClient, ModelRecord], tuple[str, float, dict]]] = {
    "chat": _check_chat,
    "embedding": _check_embedding,
    "rerank": _check_rerank,
}


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
