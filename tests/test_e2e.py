"""End to end: `provision up` against the REAL xinference-local (CPU), downloading through the REAL
`modelscope` client from `provision mirror serve` on loopback, then verify / status / ragflow / down.

One stack is brought up per module (a real server and three real model processes take a minute or
two on a small machine); the tests below run in order against it. The finaliser stops everything
this module started, by PID, even when a test fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from e2e_support import E2EStack, e2e_stack
from support import group_members, pid_alive, port_free

pytestmark = pytest.mark.e2e


MODELS = """\
  - role: embedding
    uid: e2e-embed
    name: bge-small-en-v1.5     # no source: the catalog's ModelScope id, Xorbits/bge-small-en-v1.5
    engine: sentence_transformers
  - role: rerank
    uid: e2e-rerank
    name: bge-reranker-base
    source: tiny/rerank-bert
    engine: vllm                # asked on the CPU: the server's engine check says vLLM is not installed
    n_gpu: null
    gpu_memory_utilization: 0.2
    fallbacks:
      - engine: transformers    # = sentence_transformers for rerank
        name: bge-reranker-v2-m3  # 8192 tokens in the catalog: the 512-position folder is refused unlaunched
      - name: bge-reranker-base
  - role: chat
    uid: e2e-chat
    name: qwen2.5-instruct
    source: tiny/qwen2-chat
    engine: vLLM                # n_gpu auto on a machine without a GPU: the plan skips it
    size_in_billions: 0.5
    format: pytorch
    quantization: none
    fallbacks:
      - engine: Transformers
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with e2e_stack(tmp_path_factory, "e2e") as stack:
        stack.manifest = stack.write_manifest(stack.manifest_text("e2e", MODELS, tail="ragflow:\n  docker: true\n"))
        yield stack


def test_up_brings_the_stack_up_through_fallbacks(stack: E2EStack):
    code, doc, stderr = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, f"up failed ({code}):\n{stderr}\n{json.dumps(doc, indent=2)[:4000]}"
    models = {m["uid"]: m for m in doc["models"]}
    assert {m["status"] for m in models.values()} == {"running"}

    rerank = [(a["candidate"], a["engine"], a["outcome"]) for a in models["e2e-rerank"]["attempts"]]
    assert rerank == [("primary", "vllm", "failed"), ("fallback 1", "sentence_transformers", "failed"),
                      ("fallback 2", "sentence_transformers", "ready")]
    first, mismatched = models["e2e-rerank"]["attempts"][:2]
    assert first["kind"] == "engine_missing" and "No module named 'vllm'" in first["reason"]
    # refused on its weights before any launch request: the server never saw bge-reranker-v2-m3
    assert mismatched["kind"] == "weights_mismatch"
    assert "512 positions" in mismatched["reason"] and "8192 tokens" in mismatched["reason"]
    assert "bge-reranker-base" in mismatched["reason"]  # the built-in names these weights do fit
    chat = [(a["candidate"], a["engine"], a["outcome"]) for a in models["e2e-chat"]["attempts"]]
    assert chat == [("primary", "vLLM", "skipped"), ("fallback 1", "Transformers", "ready")]
    assert models["e2e-chat"]["attempts"][0]["kind"] == "no_gpu"
    assert [a["outcome"] for a in models["e2e-embed"]["attempts"]] == ["ready"]
    assert models["e2e-rerank"]["candidate"] == "fallback 2"
    embed = doc["plan"]["steps"][0]["candidates"][0]
    assert embed["weights"].startswith("download Xorbits/bge-small-en-v1.5 from ")
    assert any(n.startswith("source Xorbits/bge-small-en-v1.5 from the catalog (xinference 4.1.0") for n in embed["notes"])

    assert {c["uid"]: c["ok"] for c in doc["checks"]} == {"e2e-embed": True, "e2e-rerank": True, "e2e-chat": True}
    assert doc["timings"]["first_ready"] < doc["timings"]["total"]
    report = os.environ.get("PROVISION_E2E_REPORT")
    if report:
        Path(report).write_text(json.dumps({"wall_seconds": stack.timings["up --json"], "timings": doc["timings"]}, indent=2))
    # The weights came through the modelscope client from the mirror into models_dir.
    assert (stack.root / "models" / "tiny" / "qwen2-chat" / "config.json").exists()
    assert (stack.root / "models" / "Xorbits" / "bge-small-en-v1.5" / "config.json").exists()


def test_ragflow_config_is_written(stack: E2EStack):
    provider = json.loads((stack.state / "ragflow" / "provider.json").read_text())
    assert provider["base_url"] == f"http://127.0.0.1:{stack.port}/v1"
    assert provider["docker_base_url"] == f"http://host.docker.internal:{stack.port}/v1"
    assert provider["api_key"] == stack.credentials()["api_key"] and provider["api_key"].startswith("xf-")
    by_role = {m["role"]: m for m in provider["models"]}
    assert {r: m["uid"] for r, m in by_role.items()} == {"embedding": "e2e-embed", "rerank": "e2e-rerank", "chat": "e2e-chat"}
    assert {r: m["model_type"] for r, m in by_role.items()} == {"embedding": "embedding", "rerank": "rerank", "chat": "chat"}
    assert by_role["chat"]["max_tokens"] == 32768  # qwen2.5-instruct's context length, as Xinference reports it
    conf = (stack.state / "ragflow").glob("service_conf*.yaml")
    assert any("user_default_llm" in p.read_text() for p in conf)

    code, doc, _ = stack.run("ragflow", "--json")
    assert code == 0 and doc["ragflow"]["base_url"] == provider["base_url"]
    code, _, _ = stack.run("ragflow", "--docker")
    assert code == 0


def test_openai_client_works_against_base_url(stack: E2EStack):
    from openai import OpenAI

    provider = json.loads((stack.state / "ragflow" / "provider.json").read_text())
    client = OpenAI(base_url=provider["base_url"], api_key=provider["api_key"])
    assert {"e2e-embed", "e2e-rerank", "e2e-chat"} <= {m.id for m in client.models.list()}
    vectors = client.embeddings.create(model="e2e-embed", input=["a panda eats bamboo", "stock markets fell"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384 and vectors[0].embedding != vectors[1].embedding
    reply = client.chat.completions.create(model="e2e-chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    # Rerank the way RAGFlow does it: requests, string booleans, the /v1/rerank path.
    body = requests.post(
        provider["base_url"].rsplit("/v1", 1)[0] + "/v1/rerank",
        json={"model": "e2e-rerank", "query": "panda", "return_documents": "true", "return_len": "true",
              "documents": ["pandas eat bamboo", "the stock market", "a bear in china"]},
        headers={"Authorization": f"Bearer {provider['api_key']}"},  # as RAGFlow sends a non-empty key
        timeout=60,
    ).json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]


def test_status_and_verify_report_the_running_stack(stack: E2EStack):
    code, doc, _ = stack.run("status", "--json")
    assert code == 0 and doc["server"]["alive"] is True
    assert {m["uid"]: (m["live"], m["candidate"]) for m in doc["models"]} == {
        "e2e-embed": ("running", "primary"), "e2e-rerank": ("running", "fallback 2"), "e2e-chat": ("running", "fallback 1")}
    code, doc, _ = stack.run("verify", "--json")
    assert code == 0 and all(c["ok"] for c in doc["checks"]) and len(doc["checks"]) == 3
    assert {c["uid"]: c["detail"] for c in doc["checks"] if c["role"] == "embedding"}["e2e-embed"].startswith("384")


def test_validate_asks_the_running_server_for_its_catalog(stack: E2EStack):
    code, doc, output = stack.run("validate", str(stack.manifest), "--json")
    assert code == 0, output
    [checked] = doc["manifests"]
    assert checked["catalog"] == f"the server at http://127.0.0.1:{stack.port} (xinference 4.1.0)"
    assert not any("built-in" in w for w in checked["warnings"])  # every name is the server's
    typo = stack.manifest.with_name("typo.yml")
    typo.write_text(stack.manifest.read_text().replace("name: bge-reranker-base\n", "name: bge-reranker-bse\n", 1))
    code, doc, _ = stack.run("validate", str(typo), "--json")
    assert code == 2
    [problem] = doc["errors"][0]["problems"]
    assert "not a built-in rerank model in the server at" in problem["message"]
    assert "`bge-reranker-base`" in problem["hint"]


def test_second_up_is_a_no_op(stack: E2EStack):
    pid_before = stack.state_json()["server"]["pid"]
    code, doc, stderr = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, stderr
    assert {s["uid"]: s["action"] for s in doc["plan"]["steps"]} == {
        "e2e-embed": "keep", "e2e-rerank": "keep", "e2e-chat": "keep"}
    assert doc["plan"]["server"] == "reuse" and doc["server"]["pid"] == pid_before
    assert "download" not in doc["timings"] and "launch" not in doc["timings"]
    assert all(c["ok"] for c in doc["checks"])


def test_a_manifest_edit_relaunches_exactly_that_model(stack: E2EStack):
    before = {m["uid"]: m for m in stack.state_json()["models"]}
    edited = stack.manifest.read_text().replace(
        "name: bge-small-en-v1.5 ", "name: text2vec-base-multilingual\n    source: tiny/minilm-embed ")
    assert edited != stack.manifest.read_text()
    stack.manifest.write_text(edited)
    code, doc, stderr = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, stderr
    assert {s["uid"]: s["action"] for s in doc["plan"]["steps"]} == {
        "e2e-embed": "relaunch", "e2e-rerank": "keep", "e2e-chat": "keep"}
    after = {m["uid"]: m for m in doc["models"]}
    assert after["e2e-embed"]["name"] == "text2vec-base-multilingual"
    assert after["e2e-embed"]["launched_at"] > before["e2e-embed"]["launched_at"]
    for uid in ("e2e-rerank", "e2e-chat"):
        assert after[uid]["launched_at"] == before[uid]["launched_at"]
    assert doc["server"]["pid"] == stack.state_json()["server"]["pid"]
    assert all(c["ok"] for c in doc["checks"])


def test_verify_catches_a_model_terminated_behind_our_back(stack: E2EStack):
    assert requests.delete(f"{stack.base}/v1/models/e2e-rerank", headers=stack.admin_headers(), timeout=60).status_code == 200
    code, doc, _ = stack.run("verify", "--json")
    assert code == 1
    failed = {c["uid"]: c["message"] for c in doc["checks"] if not c["ok"]}
    assert list(failed) == ["e2e-rerank"]
    assert "not running" in failed["e2e-rerank"]
    code, doc, _ = stack.run("status", "--json")
    assert code == 1 and {m["uid"]: m["live"] for m in doc["models"]}["e2e-rerank"] == "not running"


def test_down_leaves_nothing_running(stack: E2EStack):
    server = stack.state_json()["server"]
    pid, pgid = server["pid"], server["pgid"]
    assert pid_alive(pid) and group_members(pgid)
    code, doc, stderr = stack.run("down", "--json")
    assert code == 0, stderr
    assert set(doc["terminated"]) == {"e2e-embed", "e2e-chat"}
    assert doc["already_gone"] == ["e2e-rerank"]
    assert not pid_alive(pid)
    assert group_members(pgid) == []
    assert port_free(stack.port)
    code, doc, _ = stack.run("down", "--json")  # twice is harmless
    assert code == 0 and doc["terminated"] == []
