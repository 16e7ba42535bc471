"""launch.py: payload shape and the fallback chain's error paths, against `responses` (no server).

Candidates come from a real manifest through `manifest.parse(...).candidates(i)`, so the tests exercise
the real normalisation (engine spelling, inherited fallback fields, size ids, n_gpu defaults).
A fake clock/sleep makes polling and deadlines instant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from provision import retry
from provision.errors import HubError
from provision.engines import DEFAULT_GPU_MEMORY_UTILIZATION
from provision.launch import (
    FailureKind,
    LaunchEvent,
    launch_chain,
    launch_payload,
    summarize_failure,
)
from provision.manifest import parse
from provision.state import AttemptRecord
from provision.xinference import XinferenceClient

URL = "http://xinf.test:9997"
PREFIX = "[address=127.0.0.1:46195, pid=21499] "
MANIFEST = """
version: 1
name: t
models:
  - role: chat
    uid: qwen-chat
    name: qwen2.5-instruct
    engine: vllm
    local_path: /models/qwen
    size_in_billions: 0.5
    format: pytorch
    quantization: none
    launch_timeout: 5
    options: {max_model_len: 4096, enforce_eager: true, wait_ready: true}
    fallbacks:
      - engine: transformers
      - engine: llama.cpp
        format: ggufv2
        quantization: q4_0
  - role: embedding
    uid: emb
    name: bge-m3
    engine: vllm
    gpu_memory_utilization: 0.3
    local_path: /models/bge-m3
    fallbacks:
      - engine: sentence-transformers
  - role: rerank
    uid: rr
    name: bge-reranker-v2-m3
    engine: vllm
    local_path: /models/rr
    fallbacks:
      - name: bge-reranker-base
        source: BAAI/bge-reranker-base
        engine: sentence_transformers
      - engine: transformers
        local_path: /models/rr-local
"""


@pytest.fixture(scope="module")
def manifest():
    return parse(MANIFEST, environ={})


@pytest.fixture()
def chat(manifest):
    return manifest.candidates(0)


@pytest.fixture()
def rerank(manifest):
    return manifest.candidates(2)


@pytest.fixture(autouse=True)
def no_retry_backoff(monkeypatch):
    # The client retries GETs that reach no server with tenacity back-offs; make them instant.
    monkeypatch.setattr(retry, "BACKOFF_S", 0)


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_chain(candidates, *, resolve_path=None, log_tail=lambda: "", on_event=None, clock=None):
    clock = clock or FakeClock()
    # An engine matrix a test registered wins; otherwise the server has no /v1/engines (an old server),
    # and the chain goes straight to the launch.
    responses.add(responses.GET, re.compile(rf"{re.escape(URL)}/v1/engines/.*"), status=404, json={"detail": "Not Found"})
    return launch_chain(
        XinferenceClient(URL),
        candidates,
        resolve_path=resolve_path or (lambda c: c.folder),
        log_tail=log_tail,
        on_event=on_event,
        poll_interval=1.0,
        clock=clock,
        sleep=clock.sleep,
    )


def post(status=200, detail=None, uid="qwen-chat"):
    body = {"model_uid": uid} if detail is None else {"detail": detail}
    responses.add(responses.POST, f"{URL}/v1/models", json=body, status=status,
                  match=[matchers.query_param_matcher({"wait_ready": "false"})])


def instances(*statuses, uid="qwen-chat", error=""):
    for status in statuses:
        replica = {"replica_id": 0, "status": status, "error_message": error if status == "ERROR" else ""}
        responses.add(responses.GET, f"{URL}/v1/models/instances",
                      json=[{"model_uid": uid, "status": status, "replica_statuses": [replica]}],
                      match=[matchers.query_param_matcher({"model_uid": uid})])


def posted_bodies():
    return [json.loads(c.request.body) for c in responses.calls if c.request.method == "POST"]


# -- payload ---------------------------------------------------------------------------------------


def test_payload_for_vllm_on_gpu(chat):
    payload = launch_payload(chat[0], Path("/models/qwen"))
    assert payload == {
        "model_uid": "qwen-chat",
        "model_name": "qwen2.5-instruct",
        "model_type": "LLM",
        "model_engine": "vLLM",
        "model_format": "pytorch",
        "model_size_in_billions": "0_5",
        "quantization": "none",
        "replica": 1,
        "n_gpu": "auto",
        "enable_virtual_env": False,
        "model_path": "/models/qwen",
        "gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION["LLM"],
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    assert "wait_ready" not in payload  # never in the body: HTTP 500 "got multiple values"


def test_payload_for_cpu_keeps_n_gpu_null_and_no_gpu_share(chat):
    payload = launch_payload(chat[1], Path("/models/qwen"))
    assert payload["model_engine"] == "Transformers"
    assert "n_gpu" in payload and payload["n_gpu"] is None
    assert payload["enable_virtual_env"] is False
    assert "gpu_memory_utilization" not in payload
    assert payload["max_model_len"] == 4096  # options are inherited by fallbacks and merged last
    assert "worker_ip" not in payload and "gpu_idx" not in payload


def test_payload_embedding_uses_manifest_share_and_omits_unset(manifest):
    vllm, st = manifest.candidates(1)
    payload = launch_payload(vllm, None)
    assert payload["gpu_memory_utilization"] == 0.3
    assert payload["model_type"] == "embedding"
    assert "model_path" not in payload and "model_format" not in payload and "quantization" not in payload
    assert launch_payload(st, Path("/m"))["model_engine"] == "sentence_transformers"


@responses.activate
def test_launch_posts_wait_ready_false_as_query_parameter(chat):
    post(200)
    instances("READY")
    result = run_chain(chat[:1])
    assert result.ok
    request = next(c.request for c in responses.calls if c.request.method == "POST")
    assert "wait_ready=false" in request.url
    assert "wait_ready" not in json.loads(request.body)
    assert result.payload == posted_bodies()[0]


# -- the chain -------------------------------------------------------------------------------------


@responses.activate
def test_engine_refused_then_transformers_ready_after_two_polls(chat):
    post(400, PREFIX + "Model qwen2.5-instruct cannot be run on engine vLLM.")
    post(200)
    instances("CREATING", "CREATING", "READY")
    clock = FakeClock()
    result = run_chain(chat, clock=clock)

    assert result.ok and result.winner is chat[1] and result.uid == "qwen-chat"
    assert result.failure is None
    assert result.ready_seconds == 2.0 and clock.sleeps == [1.0, 1.0]
    assert [(a.candidate, a.engine, a.outcome, a.kind) for a in result.attempts] == [
        ("primary", "vLLM", "failed", "engine_unsupported"),
        ("fallback 1", "Transformers", "ready", ""),
    ]
    assert result.attempts[0].reason.startswith("Model qwen2.5-instruct cannot be run on engine vLLM.")
    assert "[address=" not in result.attempts[0].reason
    assert [b["model_engine"] for b in posted_bodies()] == ["vLLM", "Transformers"]
    assert len(result.attempts) == 2  # fallback 2 was never needed


@responses.activate
def test_error_status_moves_to_next_candidate(chat):
    post(200)
    instances("CREATING", "ERROR", error=PREFIX + "Error no file named model.safetensors, or pytorch_model.bin, "
              "found in directory /models/qwen.")
    post(200)
    instances("READY")
    result = run_chain(chat)
    assert result.ok and result.winner is chat[1]
    assert result.attempts[0].kind == FailureKind.BAD_PATH.value
    assert "Error no file named model.safetensors" in result.attempts[0].reason
    # After ERROR the uid is reusable: no DELETE before the next POST.
    assert not [c for c in responses.calls if c.request.method == "DELETE"]


@responses.activate
def test_vllm_engine_core_error_reads_the_server_log(chat):
    post(200)
    instances("ERROR", error=PREFIX + "Engine core initialization failed. See root cause above.")
    post(400, PREFIX + "Model qwen2.5-instruct cannot be run on engine Transformers.")
    post(400, PREFIX + "Model qwen2.5-instruct cannot be run on engine llama.cpp.")
    tail = ("ERROR [core.py:708] ValueError: No available memory for the cache blocks. "
            "Try increasing `gpu_memory_utilization` when initializing the engine.\n")
    result = run_chain(chat, log_tail=lambda: tail)
    first = result.attempts[0]
    assert first.kind == "oom"
    assert "server log: ValueError: No available memory for the cache blocks" in first.reason
    assert "gpu_memory_utilization was 0.75 (provision's default)" in first.reason
    assert result.failure.splitlines()[0].startswith("qwen-chat could not be launched: out of memory:")


@responses.activate
def test_all_fail_summary_leads_with_most_specific_cause(rerank):
    post(400, PREFIX + "Model bge-reranker-v2-m3 cannot be run on engine vllm.", uid="rr")
    post(500, PREFIX + "Failed to import module 'SentenceTransformer': Could not import module "
         "'PreTrainedModel'.\n\nPlease make sure 'sentence-transformers' is installed.", uid="rr")
    post(400, PREFIX + "Invalid input. `model_path`: /models/rr-local File or directory does not exist.", uid="rr")
    result = run_chain(rerank)

    assert not result.ok and result.winner is None and result.payload is None
    assert [a.kind for a in result.attempts] == ["engine_unsupported", "engine_missing", "bad_path"]
    lines = result.failure.splitlines()
    assert lines[0].startswith("rr could not be launched: bad model folder: Invalid input. `model_path`: "
                               "/models/rr-local File or directory does not exist.")
    assert lines[1] == "tried 3 of 3 candidates:"
    assert lines[2].startswith("  primary bge-reranker-v2-m3 on vllm: engine cannot run the model: Model")
    assert lines[3].startswith("  fallback 1 bge-reranker-base on sentence_transformers: engine not installed: "
                               "Failed to import module 'SentenceTransformer'")
    assert lines[4].startswith("  fallback 2 bge-reranker-base on sentence_transformers: bad model folder:")
    assert all("[address=" not in line for line in lines)


@responses.activate
def test_auth_refused_stops_chain_and_skips_the_rest(chat):
    post(401, "Could not validate credentials")
    result = run_chain(chat)
    assert [(a.outcome, a.kind) for a in result.attempts] == [
        ("failed", "auth"), ("skipped", "auth"), ("skipped", "auth")]
    assert "not tried: the chain stopped (credentials refused)" in result.attempts[1].reason
    assert len(posted_bodies()) == 1
    assert "tried 1 of 3 candidates:" in result.failure
    assert "fallback 1 qwen2.5-instruct on Transformers, fallback 2 qwen2.5-instruct on llama.cpp: skipped" \
        in result.failure  # identical reasons merged into one line


@responses.activate
def test_server_gone_mid_poll_is_chain_scoped(chat):
    post(200)
    instances("CREATING")
    responses.add(responses.GET, f"{URL}/v1/models/instances", body=requests.ConnectionError("refused"))
    result = run_chain(chat)
    assert [(a.outcome, a.kind) for a in result.attempts] == [
        ("failed", "server_died"), ("skipped", "server_died"), ("skipped", "server_died")]
    assert "cannot reach the Xinference server" in result.attempts[0].reason
    assert len(posted_bodies()) == 1


@responses.activate
def test_timeout_terminates_the_half_launched_model(chat):
    post(200)
    instances("CREATING")  # the last registered response repeats: never READY
    responses.add(responses.DELETE, f"{URL}/v1/models/qwen-chat", body="null", status=200)
    post(200)
    clock = FakeClock()
    result = run_chain(chat[:1], clock=clock)
    deletes = [c for c in responses.calls if c.request.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].request.url.endswith("/v1/models/qwen-chat")
    attempt = result.attempts[0]
    assert (attempt.outcome, attempt.kind) == ("failed", "timeout")
    assert "not READY after 5 s" in attempt.reason and "terminated it" in attempt.reason
    assert attempt.seconds == 5.0 and sum(clock.sleeps) == 5.0


@responses.activate
def test_connection_error_inside_the_model_is_not_a_dead_server(chat):
    post(200)
    instances("ERROR", error=PREFIX + "Connection refused while contacting the engine process")
    post(200)
    instances("READY")
    result = run_chain(chat)
    assert result.ok and result.attempts[0].kind == "unknown"


@responses.activate
def test_interrupt_mid_launch_terminates_the_model(chat):
    post(200)
    instances("CREATING")
    responses.add(responses.DELETE, f"{URL}/v1/models/qwen-chat", body="null", status=200)

    responses.add(responses.GET, re.compile(rf"{re.escape(URL)}/v1/engines/.*"), status=404)

    def interrupted(seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch_chain(XinferenceClient(URL), chat, resolve_path=lambda c: c.folder, log_tail=str,
                     clock=FakeClock(), sleep=interrupted)
    assert [c.request.method for c in responses.calls][-1] == "DELETE"


@responses.activate
def test_download_failure_of_a_fallback_is_recorded_and_next_tried(rerank):
    post(400, PREFIX + "Model bge-reranker-v2-m3 cannot be run on engine vllm.", uid="rr")
    post(200, uid="rr")
    instances("CREATING", "CREATING", "READY", uid="rr")
    resolved = []

    def resolve(candidate):
        resolved.append(candidate.label)
        if candidate.label == "fallback 1":  # fallback 2 inherits the source but has a local folder
            raise HubError("download of BAAI/bge-reranker-base failed: 404 not found on modelscope")
        return candidate.folder

    events: list[LaunchEvent] = []
    responses.add(responses.GET, f"{URL}/v1/models/rr/progress", json={"progress": 0.5, "stage": "loading"})
    result = run_chain(rerank, resolve_path=resolve, on_event=events.append)
    assert resolved == ["primary", "fallback 1", "fallback 2"]
    assert [(a.candidate, a.outcome, a.kind) for a in result.attempts] == [
        ("primary", "failed", "engine_unsupported"),
        ("fallback 1", "failed", "download"),
        ("fallback 2", "ready", ""),
    ]
    assert "404 not found" in result.attempts[1].reason
    assert result.winner is rerank[2]
    assert result.payload["model_path"] == "/models/rr-local"
    assert result.payload["model_engine"] == "sentence_transformers"
    assert [e.kind for e in events if e.candidate is rerank[2]] == ["resolving", "launching", "progress", "ready"]
    assert [(e.message, e.progress) for e in events if e.kind == "progress"] == [("loading", 0.5)]
    assert str(events[-1]) == "fallback 2 bge-reranker-base on sentence_transformers: ready: in 2.0 s"
    assert str(events[-2]) == "fallback 2 bge-reranker-base on sentence_transformers: progress: loading 50%"


# -- messages --------------------------------------------------------------------------------------


def attempt(label, kind, reason, outcome="failed", engine="vllm"):
    return AttemptRecord(candidate=label, name="bge-m3", engine=engine, outcome=outcome, reason=reason,
                         kind=kind, seconds=1.25)


def test_summary_cuts_merges_and_says_and_n_more():
    attempts = [attempt("primary", "unknown", "x" * 500)]
    attempts += [attempt(f"fallback {i}", "engine_unsupported", f"cannot be run on engine e{i}") for i in range(1, 7)]
    attempts += [attempt("fallback 7", "engine_unsupported", "cannot be run on engine e1")]
    text = summarize_failure("emb", attempts, 8)
    lines = text.splitlines()
    assert lines[0] == "emb could not be launched: engine cannot run the model: cannot be run on engine e1"
    assert lines[1] == "tried 8 of 8 candidates:"
    assert len(lines[2]) < 200 and lines[2].endswith("...")
    assert "fallback 1 bge-m3 on vllm, fallback 7 bge-m3 on vllm:" in text
    assert lines[-1] == "  and 2 more"
    assert len(lines) == 2 + 5 + 1


@responses.activate
def test_engine_matrix_skips_an_engine_that_is_not_installed_without_fetching_or_posting(chat):
    responses.add(responses.GET, f"{URL}/v1/engines/qwen2.5-instruct", json={
        "vLLM": "Failed to import vLLM: No module named 'vllm'",
        "Transformers": [{"model_name": "qwen2.5-instruct", "model_format": "pytorch"}],
    })
    post()
    instances("READY")
    fetched = []
    result = run_chain(chat[:2], resolve_path=lambda c: fetched.append(c.label) or c.folder)
    assert [(a.candidate, a.outcome, a.kind) for a in result.attempts] == [
        ("primary", "failed", "engine_missing"), ("fallback 1", "ready", "")]
    assert "No module named 'vllm'" in result.attempts[0].reason
    assert fetched == ["fallback 1"]  # the vLLM candidate's weights were never fetched
    assert [b["model_engine"] for b in posted_bodies()] == ["Transformers"]
    assert len([c for c in responses.calls if "/v1/engines/" in c.request.url]) == 1  # asked once per name


@responses.activate
def test_engine_matrix_without_the_engine_names_the_ones_it_has(rerank):
    responses.add(responses.GET, f"{URL}/v1/engines/rerank/bge-reranker-v2-m3", json={
        "sentence_transformers": [{"model_name": "bge-reranker-v2-m3"}],
        "llama.cpp": "Engine llama.cpp library is not installed",
    })
    result = run_chain(rerank[:1])
    assert result.attempts[0].kind == "engine_unsupported"
    assert "no vllm engine for bge-reranker-v2-m3" in result.attempts[0].reason
    assert "llama.cpp, sentence_transformers" in result.attempts[0].reason
    assert posted_bodies() == []
