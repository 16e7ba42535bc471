"""Load one endpoint at one concurrency: N threads, each with its own HTTP session, sending requests back to
back until the level's time or request budget is spent; every answer is checked and timed.

Requests go only where the caller allows (bench/__init__.py checks the URL); redirects are never followed,
so an answer cannot send the load elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

import requests

from .stats import LevelStats, Sample, summarize
from .workload import Requests

PATHS = {"embedding": "/v1/embeddings", "rerank": "/v1/rerank", "chat": "/v1/chat/completions"}
ERROR_CHARS = 200


class Endpoint:
    """One model's endpoint, called as RAGFlow calls it (Bearer key, JSON body)."""

    def __init__(self, base_url: str, role: str, uid: str, api_key: str | None, bodies: Requests, timeout: float):
        self.url = base_url.rstrip("/") + PATHS[role]
        self.role, self.uid, self.bodies, self.timeout = role, uid, bodies, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._count = 0
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxy between the bench and the server
        session.headers.update(self.headers)
        return session

    def next_body(self) -> dict:
        with self._lock:
            n = self._count
            self._count += 1
        return getattr(self.bodies, self.role)(self.uid, n)

    def call(self, session: requests.Session, level_start: float) -> Sample:
        body = self.next_body()
        started = time.monotonic()
        try:
            if self.role == "chat":
                sample = self._stream(session, body, started)
            else:
                with session.post(self.url, json=body, timeout=self.timeout, allow_redirects=False) as response:
                    _raise_for(response)
                    problem = _check(self.role, response.json(), body)
                sample = Sample(0, time.monotonic() - started, problem is None, problem or "")
        except requests.RequestException as exc:
            sample = Sample(0, time.monotonic() - started, False, _short(f"{type(exc).__name__}: {exc}"))
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not the JSON it should be
            sample = Sample(0, time.monotonic() - started, False, _short(f"bad answer: {exc}"))
        sample.start = started - level_start
        return sample

    def _stream(self, session: requests.Session, body: dict, started: float) -> Sample:
        first = last = None
        chunks, usage = 0, None
        with session.post(self.url, json=body, timeout=self.timeout, stream=True, allow_redirects=False) as response:
            _raise_for(response)
            for raw in response.iter_lines():
                line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else str(raw).strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if isinstance(event, dict) and event.get("error"):
                    return Sample(0, time.monotonic() - started, False, _short(f"stream error: {event['error']}"))
                if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                    usage = event["usage"].get("completion_tokens") or usage
                choices = event.get("choices") if isinstance(event, dict) else None
                choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                if delta.get("content") or delta.get("reasoning_content"):
                    now = time.monotonic()
                    first = first or now
                    last = now
                    chunks += 1
        ended = time.monotonic()
        if first is None:
            return Sample(0, ended - started, False, "the stream carried no text")
        tokens = usage if isinstance(usage, int) and usage > 0 else chunks
        tpot = (last - first) / (tokens - 1) if tokens > 1 else None
        return Sample(0, ended - started, True, ttft=first - started, tokens=tokens, tpot=tpot)


def _raise_for(response: requests.Response) -> None:
    if response.status_code >= 300:  # a redirect too: it is not followed
        raise requests.HTTPError(f"HTTP {response.status_code}: {response.text[:ERROR_CHARS]}", response=response)


def _check(role: str, answer, body: dict) -> str | None:
    """Why an answer is not what RAGFlow needs (None: it is)."""
    if role == "embedding":
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(body["input"]):
            return f"sent {len(body['input'])} texts, got {len(data) if isinstance(data, list) else 'no'} vectors"
        return None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != len(body["documents"]):
        got = len(results) if isinstance(results, list) else "no"
        return f"sent {len(body['documents'])} documents, got {got} scores"
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def run_level(endpoint: Endpoint, concurrency: int, duration: float, max_requests: int,
              clock: Callable[[], float] = time.monotonic) -> LevelStats:
    """`concurrency` threads send requests back to back; no new one starts after `duration` seconds or once
    `max_requests` have started. The level ends with its last answer (each bounded by the request timeout)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    started = clock()
    budget = {"left": max_requests, "stopped_by": "duration"}

    def claim() -> bool:
        with lock:
            if clock() - started >= duration and samples:
                return False
            if budget["left"] <= 0:
                budget["stopped_by"] = "max_requests"
                return False
            budget["left"] -= 1
            return True

    def worker() -> None:
        session = endpoint.session()
        try:
            while claim():
                sample = endpoint.call(session, started)
                with lock:
                    samples.append(sample)
        finally:
            session.close()

    threads = [threading.Thread(target=worker, name=f"bench-{endpoint.role}-{i}", daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = max((s.start + s.latency for s in samples), default=clock() - started)
    return summarize(concurrency, samples, seconds, chat=endpoint.role == "chat", stopped_by=budget["stopped_by"])
