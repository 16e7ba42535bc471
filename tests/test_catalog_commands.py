"""`provision models` and `provision init`: the catalog searched from the command line, and a manifest
written for this machine that `validate` and `plan` accept as it is."""

from __future__ import annotations

import json

import pytest

from provision import observe as observe_module
from provision.commands import init as init_module
from provision.commands.plan import plan as plan_only
from provision.gpu import GiB, Gpu, StaticSource
from provision.manifest import load
from provision.state import StateDir


def run_json(invoke, *args):
    result = invoke([*args, "--json"])
    return result, json.loads(result.stdout)


# -- provision models --------------------------------------------------------------------------------------


def test_models_lists_the_rerankers_matching_a_query_with_their_hub_ids(invoke):
    result, doc = run_json(invoke, "models", "bge", "--role", "rerank")
    assert result.exit_code == 0, result.stderr
    assert doc["catalog"].startswith("xinference ")
    names = [m["name"] for m in doc["models"]]
    assert "bge-reranker-v2-m3" in names and all(m["role"] == "rerank" for m in doc["models"])
    v2 = next(m for m in doc["models"] if m["name"] == "bge-reranker-v2-m3")
    assert v2["max_tokens"] == 8192
    assert "BAAI/bge-reranker-v2-m3" in v2["huggingface_ids"]
    assert "AI-ModelScope/bge-reranker-v2-m3" in v2["modelscope_ids"]


def test_models_finds_the_family_of_a_hub_id(invoke):
    result, doc = run_json(invoke, "models", "Qwen/Qwen3-4B-Instruct-2507")
    assert [m["name"] for m in doc["models"]] == ["Qwen3-Instruct"]


def test_models_as_chat_leaves_out_the_llms_that_cannot_chat(invoke):
    _, doc = run_json(invoke, "models", "--role", "chat")
    assert doc["models"] and all("chat" in m["abilities"] for m in doc["models"])
    _, every = run_json(invoke, "models")
    assert len(every["models"]) > len(doc["models"])
    assert {"chat", "embedding", "rerank"} <= {m["role"] for m in every["models"]}


def test_an_exact_name_shows_the_family_in_full_with_an_entry_that_validates(invoke, tmp_path):
    result = invoke(["models", "Qwen3-Instruct"])
    assert result.exit_code == 0, result.stderr
    assert "Qwen/Qwen3-4B-Instruct-2507" in result.stdout and "KV bytes/token" in result.stdout
    _, doc = run_json(invoke, "models", "Qwen3-Instruct")
    entry = doc["model"]["manifest_entry"]
    assert "size_in_billions: 4\n" in entry  # the smallest plain spec, not the 235B one listed first
    assert doc["model"]["context_length"] == 262144
    (tmp_path / "m.yml").write_text("version: 1\nname: t\nmodels:\n" + entry
                                    + "roles: {chat: 1, embedding: 0, rerank: 0}\n")
    checked = invoke(["validate", tmp_path / "m.yml"])
    assert checked.exit_code == 0, checked.stderr


def test_an_embedding_entry_names_its_numbers(invoke):
    result = invoke(["models", "bge-m3"])
    assert "dimensions: 1024" in result.stdout and "max tokens: 8192" in result.stdout
    assert "source: Xorbits/bge-m3" in result.stdout


def test_a_query_nothing_matches_exits_1_and_says_what_to_try(invoke):
    result = invoke(["models", "no-such-model-anywhere"])
    assert result.exit_code == 1
    assert "try a shorter query" in result.stdout
    _, doc = run_json(invoke, "models", "no-such-model-anywhere")
    assert doc["models"] == [] and doc["errors"][0]["type"] == "NotFound"


# -- provision init -----------------------------------------------------------------------------------------


def write_init(invoke, tmp_path, *args) -> tuple:
    target = tmp_path / "stack.yml"
    result = invoke(["init", "-o", target, "--force", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return target, json.loads(result.stdout)


def plan_with_gpu(monkeypatch, path, total_gib: float, free_gib: float):
    gpus = [Gpu(0, "NVIDIA L40S", int(total_gib * GiB), int(free_gib * GiB))]
    monkeypatch.setattr(observe_module, "NvmlSource", lambda visible: StaticSource(gpus))
    return plan_only(str(path), StateDir(path.parent / ".provision"))


def test_init_without_a_gpu_writes_a_cpu_stack_that_validates_and_plans(invoke, tmp_path, monkeypatch):
    monkeypatch.setattr(init_module, "NvmlSource", lambda: StaticSource([]))
    path, doc = write_init(invoke, tmp_path)
    assert doc["gpu"] == "no GPU (NVML)"
    assert invoke(["validate", path]).exit_code == 0
    manifest = load(str(path))
    assert [m.role for m in manifest.models] == ["chat", "embedding", "rerank"]
    assert all(c.n_gpu is None for i in range(3) for c in manifest.candidates(i))
    plan = plan_only(str(path), StateDir(tmp_path / ".provision"))
    assert all(s.candidates[0].first and not s.candidates[0].skip_reason for s in plan.steps)
    assert "# Written by `provision init` for no GPU" in path.read_text()


@pytest.mark.parametrize("free_gib, chat", [(24, "Qwen3-Instruct 4B"), (8, "qwen2.5-instruct 1.5B"),
                                            (80, "Qwen3-Instruct 30B")])
def test_init_for_free_gpu_memory_picks_what_fits_and_plan_launches_it_first(invoke, tmp_path, monkeypatch,
                                                                             free_gib, chat):
    path, doc = write_init(invoke, tmp_path, "--gpu-free-gib", free_gib)
    assert doc["choices"][0].startswith(f"chat: {chat} on vLLM")
    assert invoke(["validate", path]).exit_code == 0
    plan = plan_with_gpu(monkeypatch, path, total_gib=free_gib + 16, free_gib=free_gib)
    chat_step = next(s for s in plan.steps if s.role == "chat")
    primary = chat_step.candidates[0]
    assert primary.engine == "vLLM" and primary.first and not primary.skip_reason, primary.memory
    assert primary.memory.startswith("auto -> ")
    share = primary.gpu_memory_utilization
    assert share * (free_gib + 16) * GiB <= free_gib * GiB  # what vLLM takes is free now
    chain = [c.engine for c in chat_step.candidates]
    assert chain == ["vLLM", "Transformers", "Transformers"]
    assert chat_step.candidates[-1].name == "qwen2.5-instruct"


def test_init_keeps_what_the_gpu_cannot_hold_on_the_cpu(invoke, tmp_path):
    _, doc = write_init(invoke, tmp_path, "--gpu-free-gib", 8)
    assert "rerank: bge-reranker-base on the CPU (the GPU has no room left for it)" in doc["choices"]


def test_init_asks_nvml_when_no_budget_is_given(invoke, tmp_path, monkeypatch):
    card = Gpu(0, "NVIDIA A100-SXM4-80GB", 80 * GiB, 24 * GiB)
    monkeypatch.setattr(init_module, "NvmlSource", lambda: StaticSource([card]))
    _, doc = write_init(invoke, tmp_path)
    assert doc["gpu"] == "GPU 0 NVIDIA A100-SXM4-80GB: 24.0 GiB free"
    assert doc["choices"][0].startswith("chat: Qwen3-Instruct 4B on vLLM")


def test_init_for_docker_serves_every_interface_and_validates(invoke, tmp_path):
    path, _ = write_init(invoke, tmp_path, "--gpu-free-gib", 0, "--docker")
    manifest = load(str(path))
    assert manifest.server.host == "0.0.0.0" and manifest.ragflow.docker is True
    assert invoke(["validate", path]).exit_code == 0


def test_init_prints_the_manifest_to_stdout_and_refuses_to_overwrite(invoke, tmp_path):
    printed = invoke(["init", "--gpu-free-gib", 0])
    assert printed.exit_code == 0 and printed.stdout.startswith("# Written by `provision init`")
    target = tmp_path / "stack.yml"
    target.write_text("mine\n")
    refused = invoke(["init", "-o", target])
    assert refused.exit_code == 2 and "exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == "mine\n"
