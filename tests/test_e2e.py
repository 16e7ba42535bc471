"""End to end: `provision up` against the REAL xinference-local (CPU), downloading through the REAL
`modelscope` client from `provision mirror serve` on loopback, then verify / status / ragflow / down, with
`up` registering the stack in the RAGFlow stand-in (tests/ragflow_standin.py), whose checks call the real
models the way RAGFlow 0.27 does.

One stack is brought up per module (a real server and three real model processes take a minute or
two on a small machine); the tests below run in order against it. The finaliser stops everything
this module started, by PID, even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from e2e_support import E2EStack, e2e_stack
from ragflow_standin import RagflowStandin
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
def ragflow():
    with RagflowStandin() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ragflow):
    with e2e_stack(tmp_path_factory, "e2e") as stack:
        stack.env["RAGFLOW_API_TOKEN"] = ragflow.api_token  # the token from the environment, never the manifest
        stack.manifest = stack.write_manifest(stack.manifest_text("e2e", MODELS, tail=f"ragflow:\n  url: {ragflow.url}\n"))
        yield stack


def test_up_brings_the_stack_up_through_fallbacks(stack: E2EStack, ragflow: RagflowStandin):
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

    # up ended by registering the stack in RAGFlow, each model checked by RAGFlow itself, then the defaults.
    applied = doc["ragflow_apply"]
    assert applied["ok"] and applied["instance"] == "e2e" and applied["base_url"] == stack.base  # no /v1
    assert {c["uid"]: c["ok"] for c in applied["checks"]} == {"e2e-embed": True, "e2e-rerank": True, "e2e-chat": True}
    writes = [(c["method"], c["path"]) for c in ragflow.writes()]
    P = "/api/v1/providers/Xinference"
    assert writes[:3] == [("PUT", "/api/v1/providers"), ("POST", f"{P}/instances"), ("PUT", f"{P}/instances/e2e")]
    assert writes[3:] == [("PATCH", "/api/v1/models/default")] * 3
    assert ragflow.defaults.keys() == {"chat", "embedding", "rerank"}
    stored = ragflow.instance("e2e")
    assert stored["api_key"] == stack.credentials()["api_key"]
    assert {n: (m["model_type"], m["extra"].get("verify")) for n, m in stored["models"].items()} == {
        "e2e-embed": (["embedding"], "success"), "e2e-rerank": (["rerank"], "success"), "e2e-chat": (["chat"], "success")}
    # RAGFlow's checks reached the real models: embedding in base64, chat streamed, rerank with string booleans.
    sent = {urlsplit(r["url"]).path: r for r in ragflow.upstream}
    assert sent.keys() >= {"/v1/embeddings", "/v1/chat/completions", "/v1/rerank"}
    assert sent["/v1/embeddings"]["body"]["encoding_format"] == "base64"
    assert sent["/v1/rerank"]["body"]["return_documents"] == "true"


def test_ragflow_config_is_written(stack: E2EStack):
    provider = json.loads((stack.state / "ragflow" / "provider.json").read_text())
    # RAGFlow adds /v1 itself (discovery of a Base URL ending in /v1 asks /v1/v1/models and finds nothing).
    assert provider["base_url"] == f"http://127.0.0.1:{stack.port}"
    assert provider["docker_base_url"] == f"http://host.docker.internal:{stack.port}"
    assert provider["openai_base_url"] == f"http://127.0.0.1:{stack.port}/v1"
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
    client = OpenAI(base_url=provider["openai_base_url"], api_key=provider["api_key"])
    assert {"e2e-embed", "e2e-rerank", "e2e-chat"} <= {m.id for m in client.models.list()}
    vectors = client.embeddings.create(model="e2e-embed", input=["a panda eats bamboo", "stock markets fell"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384 and vectors[0].embedding != vectors[1].embedding
    reply = client.chat.completions.create(model="e2e-chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    # Rerank the way RAGFlow does it: requests, string booleans, the /v1/rerank path.
    body = requests.post(
        provider["base_url"] + "/v1/rerank",
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


def test_second_up_is_a_no_op(stack: E2EStack, ragflow: RagflowStandin):
    pid_before = stack.state_json()["server"]["pid"]
    writes_before = len(ragflow.writes())
    code, doc, stderr = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, stderr
    assert {s["uid"]: s["action"] for s in doc["plan"]["steps"]} == {
        "e2e-embed": "keep", "e2e-rerank": "keep", "e2e-chat": "keep"}
    assert doc["plan"]["server"] == "reuse" and doc["server"]["pid"] == pid_before
    assert "download" not in doc["timings"] and "launch" not in doc["timings"]
    assert all(c["ok"] for c in doc["checks"])
    assert doc["ragflow_apply"]["changed"] is False and doc["ragflow_apply"]["ok"]
    assert len(ragflow.writes()) == writes_before  # RAGFlow already had the stack: nothing written


def test_ragflow_apply_updates_a_changed_instance_in_place(stack: E2EStack, ragflow: RagflowStandin):
    stored = ragflow.instance("e2e")
    instance_id = stored["id"]
    stored["base_url"] = "http://127.0.0.1:9/v1"  # someone edited it in RAGFlow's UI
    code, doc, output = stack.run("ragflow", "apply", "--json")
    assert code == 0, output
    [step] = doc["ragflow"]["steps"]
    assert (step["action"], step["target"]) == ("update", "instance e2e") and "Base URL" in step["reason"]
    assert ragflow.instance("e2e")["id"] == instance_id and ragflow.instance("e2e")["base_url"] == stack.base
    code, doc, _ = stack.run("ragflow", "status", "--json")
    assert code == 0 and doc["ragflow"]["in_sync"] is True


def test_the_embedding_guard_keeps_datasets_of_another_model(stack: E2EStack, ragflow: RagflowStandin):
    ragflow.defaults.pop("embedding")  # the tenant's default is another model, used by a dataset with chunks
    ragflow.add_dataset("manuals", "bge-m3@old@Xinference", chunk_count=40, dim=1024)
    code, _, output = stack.run("plan", str(stack.manifest))
    assert code == 0 and "manuals" in output and "1024 -> 384 dimensions" in output
    code, doc, output = stack.run("ragflow", "apply")
    assert code == 3, output
    assert "manuals" in output and "40 chunks by bge-m3@old@Xinference, 1024 -> 384 dimensions" in output
    assert "embedding" not in ragflow.defaults
    code, doc, output = stack.run("ragflow", "apply", "--switch-embedding", "--json")
    guard = doc["ragflow"]["embedding"]
    assert guard["switched"] is True
    [checked] = guard["datasets"]
    assert checked["name"] == "manuals" and checked["check_code"] not in (None, 0)  # RAGFlow: the dimensions differ
    assert ragflow.defaults["embedding"][1] == "e2e-embed"
    ragflow.datasets.clear()


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
    # RAGFlow's own check of it fails too: apply says so, with what to do, and exits 3.
    code, _, output = stack.run("ragflow", "apply")
    assert code == 3, output
    assert re.search(r"FAIL +rerank +e2e-rerank", output) and "fix:" in output, output


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
