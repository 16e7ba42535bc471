"""`provision ragflow apply` and `ragflow status` from the command line: the stack in the state, RAGFlow
from the manifest's `ragflow:` (or --url), the token from the environment; against the RAGFlow stand-in
and a tiny Xinference (the real server's run is in the e2e tests)."""

from __future__ import annotations

import json

import pytest

from provision.state import ModelRecord, ServerRecord, State, StateDir

P = "/api/v1/providers/Xinference"


def stack(tmp_path, xinference, ragflow: str = "") -> StateDir:
    """A state of the tiny Xinference's three models (a server without auth) and its manifest."""
    manifest = tmp_path / "stack.yml"
    manifest.write_text("version: 1\nname: gpu-box\nmodels:\n"
                        "  - role: chat\n    uid: chat-1\n    name: qwen2.5-instruct\n    engine: Transformers\n"
                        "    size_in_billions: 0.5\n    source: a/b\n"
                        "  - role: embedding\n    uid: emb-1\n    name: bge-small-en-v1.5\n    source: a/c\n"
                        "  - role: rerank\n    uid: rr-1\n    name: bge-reranker-base\n    source: a/d\n" + ragflow)
    host, port = "127.0.0.1", xinference.port
    records = [ModelRecord(role=r, uid=u, model_type=t, status="running", name=n, context_length=c,
                           dimensions=d, numbers_from={"context_length": "the catalog"})
               for r, u, t, n, c, d in (("chat", "chat-1", "LLM", "qwen2.5-instruct", 32768, None),
                                        ("embedding", "emb-1", "embedding", "bge-small-en-v1.5", 512, 8),
                                        ("rerank", "rr-1", "rerank", "bge-reranker-base", 512, None))]
    state_dir = StateDir(tmp_path / ".provision")
    state_dir.write(State(manifest=str(manifest), name="gpu-box",
                          server=ServerRecord(url=f"http://{host}:{port}", managed=False, host=host, port=port),
                          models=records))
    return state_dir


def run(invoke, state_dir, *args, env=None):
    result = invoke(["--state-dir", state_dir.path, "ragflow", *args, "--json"], env=env)
    return result, json.loads(result.stdout)


def test_apply_registers_the_stack_and_a_second_apply_changes_nothing(invoke, tmp_path, xinference, standin):
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n")
    env = {"RAGFLOW_API_TOKEN": standin.api_token}
    result, doc = run(invoke, state_dir, "apply", env=env)
    assert result.exit_code == 0, result.output
    applied = doc["ragflow"]
    assert applied["instance"] == "gpu-box" and applied["base_url"] == xinference.url  # no /v1
    assert applied["changed"] and applied["ok"]
    assert [c["uid"] for c in applied["checks"] if c["ok"]] == ["chat-1", "emb-1", "rr-1"]
    assert standin.instance("gpu-box")["api_key"] == "x"  # the server has no auth: never an empty key
    assert standin.upstream  # RAGFlow called the models itself
    warmed = [r["body"]["model"] for r in xinference.requests if r["method"] == "POST" and r["auth"] is None]
    assert {"chat-1", "emb-1", "rr-1"} <= set(warmed)  # provision's own request first (RAGFlow sends Bearer x)
    result, doc = run(invoke, state_dir, "apply", env=env)
    assert result.exit_code == 0 and doc["ragflow"]["changed"] is False
    result, doc = run(invoke, state_dir, "status", env=env)
    assert result.exit_code == 0 and doc["ragflow"]["in_sync"] is True


def test_a_dry_run_prints_the_calls_and_writes_nothing(invoke, tmp_path, xinference, standin):
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n  instance: lab\n")
    result = invoke(["--state-dir", state_dir.path, "ragflow", "apply", "--dry-run"],
                    env={"RAGFLOW_API_TOKEN": standin.api_token})
    assert result.exit_code == 0, result.output
    assert "dry run: nothing was changed" in result.stdout
    assert f"POST {P}/instances" in result.stdout and "instance 'lab'" in result.stdout
    assert standin.writes() == []


def test_the_url_flag_and_a_token_variable_the_manifest_names(invoke, tmp_path, xinference, standin):
    state_dir = stack(tmp_path, xinference, "ragflow:\n  url: http://127.0.0.1:9\n  api_token_env: MY_TOKEN\n")
    result, doc = run(invoke, state_dir, "apply", "--url", standin.url, env={"MY_TOKEN": standin.api_token})
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("ragflow, env, said", [
    ("", {}, "has no ragflow.url"),
    ("ragflow:\n  url: {url}\n", {"RAGFLOW_API_TOKEN": ""}, "$RAGFLOW_API_TOKEN is not set"),
    ("ragflow:\n  url: {url}\n  email: a@b.c\n  password_env: RF_PASS\n", {}, "$RF_PASS is not set"),
])
def test_what_is_missing_is_said(invoke, tmp_path, xinference, standin, ragflow, env, said):
    state_dir = stack(tmp_path, xinference, ragflow.format(url=standin.url))
    result, doc = run(invoke, state_dir, "apply", env={"RAGFLOW_API_TOKEN": "", **env})
    assert result.exit_code == 2
    assert said in doc["errors"][0]["message"] and doc["errors"][0]["hint"]


def test_a_refused_token_is_an_error_with_the_way_out(invoke, tmp_path, xinference, standin):
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n")
    result, doc = run(invoke, state_dir, "apply", env={"RAGFLOW_API_TOKEN": "ragflow-wrong"})
    assert result.exit_code == 1
    assert doc["errors"][0]["type"] == "RagflowAuthError" and "API" in doc["errors"][0]["hint"]


def test_a_model_ragflow_cannot_reach_is_exit_3_with_its_remedy(invoke, tmp_path, xinference, standin):
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n")
    xinference.fail["rr-1"] = 404
    result, doc = run(invoke, state_dir, "apply", env={"RAGFLOW_API_TOKEN": standin.api_token})
    assert result.exit_code == 3, result.output
    [failed] = [c for c in doc["ragflow"]["checks"] if c["ok"] is False]
    assert failed["uid"] == "rr-1" and failed["remedy"]
    assert doc["errors"][0]["type"] == "RagflowCheck" and doc["errors"][0]["hint"] == failed["remedy"]
    text = invoke(["--state-dir", state_dir.path, "ragflow", "status"], env={"RAGFLOW_API_TOKEN": standin.api_token})
    assert "rr-1" in text.stdout and text.exit_code in (0, 1)


def test_the_embedding_guard_holds_the_default_until_asked(invoke, tmp_path, xinference, standin):
    standin.add_dataset("manuals", "bge-m3@old@Xinference", chunk_count=40, dim=1024)
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n")
    env = {"RAGFLOW_API_TOKEN": standin.api_token}
    result, doc = run(invoke, state_dir, "apply", env=env)
    assert result.exit_code == 3
    guard = doc["ragflow"]["embedding"]
    assert guard["held"] is True and guard["datasets"][0]["name"] == "manuals"
    assert any(e["type"] == "RagflowDefault" for e in doc["errors"])
    result, doc = run(invoke, state_dir, "apply", "--switch-embedding", env=env)
    guard = doc["ragflow"]["embedding"]
    assert guard["switched"] is True and guard["datasets"][0]["check_code"] is not None
    assert guard["datasets"][0]["dimensions"] == 1024  # bge-m3, from the catalog: not a model of the stack


def test_plan_shows_the_embedding_guard_when_it_can_reach_ragflow(invoke, tmp_path, xinference, standin):
    standin.add_dataset("manuals", "bge-m3@old@Xinference", chunk_count=40, dim=1024)
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n")
    manifest = tmp_path / "stack.yml"
    result = invoke(["--state-dir", state_dir.path, "plan", manifest, "--json"],
                    env={"RAGFLOW_API_TOKEN": standin.api_token})
    warnings = json.loads(result.stdout)["plan"]["warnings"]
    guard = [w for w in warnings if "manuals" in w]
    assert len(guard) == 1, warnings
    assert "40 chunks by bge-m3@old@Xinference, 1024 -> 384 dimensions" in guard[0]
    assert "--switch-embedding" in guard[0]
    assert standin.writes() == []  # plan only reads


def test_plan_says_when_ragflow_cannot_be_asked(invoke, tmp_path, xinference):
    from support import free_port

    url = f"http://127.0.0.1:{free_port()}"
    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {url}\n")
    result = invoke(["--state-dir", state_dir.path, "plan", tmp_path / "stack.yml", "--json"],
                    env={"RAGFLOW_API_TOKEN": "t"})
    assert result.exit_code == 0, result.stdout
    warnings = json.loads(result.stdout)["plan"]["warnings"]
    assert any(w.startswith(f"RAGFlow at {url} was not asked about its datasets") for w in warnings), warnings


@pytest.mark.parametrize("apply_key, registered", [("", True), ("  apply: false\n", False)])
def test_up_registers_only_when_ragflow_apply_is_not_off(tmp_path, monkeypatch, xinference, standin, apply_key,
                                                         registered):
    from types import SimpleNamespace

    from provision.apply.sequence import _register_in_ragflow
    from provision.manifest import load

    state_dir = stack(tmp_path, xinference, f"ragflow:\n  url: {standin.url}\n{apply_key}")
    lines = []
    console = SimpleNamespace(line=lines.append, warn=lines.append)
    run = SimpleNamespace(manifest=load(str(tmp_path / "stack.yml")), state_dir=state_dir, state=state_dir.read(),
                          console=console, stage_seconds={})
    monkeypatch.setenv("RAGFLOW_API_TOKEN", standin.api_token)
    applied, error = _register_in_ragflow(run)
    assert error is None
    assert (applied is not None) is registered
    assert bool(standin.writes()) is registered
