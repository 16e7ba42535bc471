"""provision.verify against canned Xinference answers (the shapes in xinference-cpu-feasibility.md §5)."""

from __future__ import annotations

import json

import pytest
import responses

from provision.state import ModelRecord
from provision.verify import EMBED_INPUTS, RERANK_DOCUMENTS, CheckResult, not_checked, verify_all, verify_model
from provision.xinference import XinferenceClient

BASE = "http://127.0.0.1:9997"


@pytest.fixture
def client() -> XinferenceClient:
    return XinferenceClient(BASE)


def record(role: str, uid: str | None = None, **kw) -> ModelRecord:
    model_type = {"chat": "LLM"}.get(role, role)
    defaults = {"chat": "qwen2.5-instruct", "embedding": "bge-small-en-v1.5", "rerank": "bge-reranker-base"}
    kw.setdefault("name", defaults[role])
    return ModelRecord(role=role, uid=uid or f"{role}-1", model_type=model_type, status=kw.pop("status", "running"), **kw)


def embeddings(vectors: list) -> dict:
    return {"object": "list", "model": "embedding-1",
            "data": [{"index": i, "object": "embedding", "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 10, "total_tokens": 10}}


def good_vectors(size: int = 4) -> list[list[float]]:
    return [[0.1 * (i + 1) + 0.01 * j for j in range(size)] for i in range(len(EMBED_INPUTS))]


def rerank_answer(order: list[int], scores: list[float]) -> dict:
    return {"id": "r1", "results": [{"index": i, "relevance_score": s, "document": None}
                                    for i, s in zip(order, scores)],
            "meta": {"tokens": {"input_tokens": 10, "output_tokens": 10}}}


def chat_answer(content, role: str = "assistant") -> dict:
    return {"id": "chat1", "object": "chat.completion", "model": "chat-1",
            "choices": [{"index": 0, "message": {"role": role, "content": content}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36}}


def sent(call) -> dict:
    return json.loads(call.request.body)


# -- good answers -------------------------------------------------------------------------------------


@responses.activate
def test_embedding_ok_reports_vector_size(client):
    responses.post(f"{BASE}/v1/embeddings", json=embeddings(good_vectors(384)))
    result = verify_model(client, record("embedding", dimensions=384))
    assert result.ok and result.status == "ok", result.message
    assert result.detail == "384-dim vectors" and result.facts["vector_size"] == 384
    assert result.latency_s is not None
    body = sent(responses.calls[0])
    assert body == {"model": "embedding-1", "input": EMBED_INPUTS}
    assert len(set(body["input"])) == len(body["input"]) >= 3


@responses.activate
def test_embedding_accepts_unordered_indices(client):
    answer = embeddings(good_vectors())
    answer["data"].reverse()
    responses.post(f"{BASE}/v1/embeddings", json=answer)
    assert verify_model(client, record("embedding")).ok


@responses.activate
def test_rerank_ok_and_sends_ragflows_exact_payload(client):
    responses.post(f"{BASE}/v1/rerank", json=rerank_answer([0, 3, 2, 1], [0.98, 0.7, 0.01, 0.001]))
    result = verify_model(client, record("rerank"))
    assert result.ok, result.message
    assert result.detail == "4 docs scored"
    assert result.facts["docs_scored"] == len(RERANK_DOCUMENTS) and result.facts["top_index"] == 0
    body = sent(responses.calls[0])
    assert body["return_documents"] == "true" and body["return_len"] == "true"  # strings, as RAGFlow sends
    assert "top_n" not in body
    assert set(body) == {"model", "query", "return_documents", "return_len", "documents"}
    assert body["model"] == "rerank-1" and body["documents"] == RERANK_DOCUMENTS
    assert b'"return_documents": "true"' in responses.calls[0].request.body


@responses.activate
def test_chat_ok_with_ragflows_probe(client):
    responses.post(f"{BASE}/v1/chat/completions", json=chat_answer("I'm doing well, thank you!"))
    result = verify_model(client, record("chat"))
    assert result.ok, result.message
    assert result.facts["reply_chars"] == len("I'm doing well, thank you!")
    assert result.detail == "26 chars"
    body = sent(responses.calls[0])
    assert body == {"model": "chat-1", "messages": [{"role": "user", "content": "Hello! How are you doing!"}],
                    "max_tokens": 16}


@responses.activate
def test_chat_thinking_model_with_only_reasoning_passes(client):
    answer = chat_answer(None)
    answer["choices"][0]["message"]["reasoning_content"] = "The user greets me, so"
    responses.post(f"{BASE}/v1/chat/completions", json=answer)
    result = verify_model(client, record("chat"))
    assert result.ok and result.facts["reasoning_chars"] > 0


# -- bad answers --------------------------------------------------------------------------------------


def _bad_embeddings():
    v = good_vectors()
    ragged = [v[0], v[1][:-1], v[2]]
    nan = [v[0], [float("nan")] + v[1][1:], v[2]]
    same = [v[0], list(v[0]), v[2]]
    dup_index = embeddings(v)
    dup_index["data"][2]["index"] = 1
    return [
        pytest.param(embeddings(ragged), "differ in length", id="ragged"),
        pytest.param(embeddings(nan), "NaN", id="nan"),
        pytest.param(embeddings(same), "identical vectors", id="identical"),
        pytest.param(embeddings([]), "no vectors", id="empty-data"),
        pytest.param({"object": "list"}, "no vectors", id="no-data"),
        pytest.param(embeddings(v[:2]), "got 2 vectors", id="too-few"),
        pytest.param(embeddings([v[0], [], v[2]]), "vector 1 is empty", id="empty-vector"),
        pytest.param(dup_index, "indices", id="dup-index"),
    ]


@pytest.mark.parametrize("answer, fragment", _bad_embeddings())
@responses.activate
def test_embedding_bad_answers(client, answer, fragment):
    # NaN must reach the client as JSON's non-standard NaN, as a Python server would write it
    responses.post(f"{BASE}/v1/embeddings", body=json.dumps(answer), content_type="application/json")
    result = verify_model(client, record("embedding"))
    assert not result.ok and result.checked
    assert fragment in result.message
    assert result.message.startswith("embedding embedding-1: ")


@responses.activate
def test_embedding_size_differs_from_reported_dimensions(client):
    responses.post(f"{BASE}/v1/embeddings", json=embeddings(good_vectors(4)))
    result = verify_model(client, record("embedding", dimensions=384))
    assert not result.ok and "Xinference reported 384" in result.message


@pytest.mark.parametrize("answer, fragment", [
    pytest.param({"id": "r1", "meta": {}}, "dose not support", id="missing-results"),
    pytest.param(rerank_answer([0, 0, 2, 1], [0.9, 0.8, 0.2, 0.1]), "more than once", id="duplicate-index"),
    pytest.param(rerank_answer([0, 9, 2, 1], [0.9, 0.8, 0.2, 0.1]), "index 9", id="out-of-range"),
    pytest.param(rerank_answer([0, 1, 2, 3], [0.1, 0.9, 0.2, 0.05]), "not sorted", id="unsorted"),
    pytest.param(rerank_answer([0, 1], [0.9, 0.1]), "missing [2, 3]", id="top-n-cut"),
    pytest.param(rerank_answer([0, 1, 2, 3], [0.9, None, 0.2, 0.1]), "not a finite number", id="no-score"),
])
@responses.activate
def test_rerank_bad_answers(client, answer, fragment):
    responses.post(f"{BASE}/v1/rerank", json=answer)
    result = verify_model(client, record("rerank"))
    assert not result.ok
    assert fragment in result.message
    assert result.message.startswith("rerank rerank-1: ")


@pytest.mark.parametrize("answer, fragment", [
    pytest.param(chat_answer(""), "reply is empty", id="empty"),
    pytest.param(chat_answer("   "), "reply is empty", id="blank"),
    pytest.param(chat_answer(None), "reply is empty", id="null"),
    pytest.param(chat_answer("hi", role="user"), "expected 'assistant'", id="role"),
    pytest.param({"id": "x", "choices": []}, "no `choices`", id="no-choices"),
])
@responses.activate
def test_chat_bad_answers(client, answer, fragment):
    responses.post(f"{BASE}/v1/chat/completions", json=answer)
    result = verify_model(client, record("chat"))
    assert not result.ok and fragment in result.message


# -- HTTP errors and their hints ----------------------------------------------------------------------


@responses.activate
def test_not_found_says_not_running(client):
    responses.post(f"{BASE}/v1/chat/completions", status=404, json={
        "detail": "[address=127.0.0.1:46195, pid=21499] Model not found in the model list, uid: chat-1 "
                  "(cached, retry after 10.0s)"})
    result = verify_model(client, record("chat"))
    assert not result.ok
    assert result.message.startswith("chat chat-1: not running; ") and "HTTP 404" in result.message
    assert "[address=" not in result.message  # the worker prefix is stripped
    assert "not running" in result.hint and "provision up" in result.hint


@responses.activate
def test_chat_500_on_ready_model_hints_wrong_builtin_name(client):
    responses.post(f"{BASE}/v1/chat/completions", status=500,
                   json={"detail": "The chat completion request failed. Check the server logs for details."})
    result = verify_model(client, record("chat", name="qwen2.5-instruct"))
    assert not result.ok
    assert result.message.startswith("chat chat-1: fails on use; ")
    assert "The chat completion request failed" in result.message
    assert "launched but fails on use" in result.hint and "`qwen2.5-instruct`" in result.hint
    assert result.facts == {"http_status": 500} and result.detail == ""


@responses.activate
def test_503_says_still_loading(client):
    responses.post(f"{BASE}/v1/embeddings", status=503, json={"detail": "Model is loading"})
    result = verify_model(client, record("embedding"))
    assert not result.ok and "still loading" in result.hint


def test_connection_refused_says_server_down():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = verify_model(XinferenceClient(f"http://127.0.0.1:{port}"), record("rerank"))
    assert not result.ok and "server down" in result.message and "cannot reach" in result.message
    assert "server is down" in result.hint


@responses.activate
def test_auth_error_keeps_credentials_hint(client):
    responses.post(f"{BASE}/v1/rerank", status=401, json={"detail": "Could not validate credentials"})
    result = verify_model(client, record("rerank"))
    assert not result.ok and "API key" in result.hint


# -- verify_all ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [True, False])
@responses.activate
def test_verify_all_checks_running_and_reports_the_rest(client, parallel):
    responses.post(f"{BASE}/v1/embeddings", json=embeddings(good_vectors()))
    responses.post(f"{BASE}/v1/rerank", json=rerank_answer([1, 0, 2, 3], [0.9, 0.5, 0.2, 0.1]))
    responses.post(f"{BASE}/v1/chat/completions", status=500,
                   json={"detail": "The chat completion request failed. Check the server logs for details."})
    records = [
        record("chat"),
        record("embedding"),
        record("rerank", status="failed", error="every candidate failed"),
        record("rerank", uid="rerank-2"),
    ]
    results = verify_all(client, records, parallel=parallel)
    assert [r.uid for r in results] == ["chat-1", "embedding-1", "rerank-1", "rerank-2"]
    assert [r.status for r in results] == ["failed", "ok", "not checked", "ok"]
    assert "not checked" in results[2].message and "every candidate failed" in results[2].message
    assert len(responses.calls) == 3  # the failed launch was not called
    assert all(isinstance(r, CheckResult) for r in results)
    assert results[1].to_json()["status"] == "ok"


def test_not_checked():
    result = not_checked(record("chat", status="failed"), "did not come up: every candidate failed")
    assert not result.ok and not result.checked and result.status == "not checked"
    assert result.message == "chat chat-1: not checked, did not come up: every candidate failed"
