"""The planner on hand-built situations: no GPU, one GPU with 6 GiB of 80 free, two GPUs, a remote
server's cluster info, an engine matrix without vLLM; keep / relaunch / terminate; what `up` tries.

Each situation is a manifest plus an `Observed` built by hand (GPUs through StaticSource, engine matrices
and hub listings as the server and the hub give them); the assertions name the chosen candidate and
the reason text a person reads.
"""

from __future__ import annotations

from pathlib import Path

import responses

from provision import observe as observe_module
from provision import retry
from provision.apply.models import launchable
from provision.commands.plan import plan as plan_only
from provision.download.hub import RepoFile
from provision.gpu import GiB, ClusterInfoSource, Gpu, StaticSource
from provision.manifest import parse
from provision.mirror import MirrorServer
from provision.modelfiles import weight_bytes
from provision.observe import Observed, observe
from provision.plan import KEEP, LAUNCH, RELAUNCH, TERMINATE, chain_key, make_plan
from provision.render import plan_lines
from provision.state import ModelRecord, ServerRecord, State, StateDir
from provision.xinference import XinferenceClient

VLLM_MISSING = "Failed to import vLLM: No module named 'vllm'"
ST_PARAMS = [{"model_name": "bge-reranker-v2-m3", "model_format": "pytorch", "quantizations": ["none"]}]


def manifest(tmp_path: Path, models: str, *, server: str = ""):
    roles = ", ".join(f"{role}: {models.count(f'- role: {role}')}" for role in ("chat", "embedding", "rerank"))
    text = f"version: 1\nname: t\n{server}models:\n{models}roles: {{{roles}}}\n"
    return parse(text, file=str(tmp_path / "m.yml"), base_dir=tmp_path, environ={})


RERANK = """\
  - role: rerank
    uid: rerank
    name: bge-reranker-v2-m3
    source: AI-ModelScope/bge-reranker-v2-m3
    engine: vllm
    gpu_memory_utilization: {share}
    fallbacks:
      - engine: transformers
"""
CHAT = """\
  - role: chat
    uid: chat
    name: Qwen3-Instruct
    source: Qwen/Qwen3-4B-Instruct-2507
    engine: {engine}
    {extra}
    fallbacks:
      - engine: Transformers
        n_gpu: null
"""


def rerank(share="0.2") -> str:
    return RERANK.format(share=share)


def chat(engine="Transformers", extra="n_gpu: auto") -> str:
    return CHAT.format(engine=engine, extra=extra)


def one_gpu(free_gib: float = 6.0, total_gib: float = 80.0) -> list[Gpu]:
    return StaticSource([Gpu(0, "NVIDIA A100-SXM4-80GB", int(total_gib * GiB), int(free_gib * GiB))]).gpus()


def listing(source: str, weights_gib: float, revision=None) -> dict:
    files = [RepoFile("config.json", 700, ""), RepoFile("model.safetensors", int(weights_gib * GiB), "")]
    return {(source, revision): files}


def first(step):
    chosen = [c for c in step.candidates if c.first]
    assert len(chosen) <= 1
    return chosen[0] if chosen else None


# --------------------------------------------------------------------------------------------------
# No GPU


def test_no_gpu_skips_vllm_and_chooses_the_cpu_fallback(tmp_path):
    m = manifest(tmp_path, rerank() + chat())
    plan = make_plan(m, Observed(gpus=[], gpu_source="NVML"))
    rr = plan.step("rerank")
    primary, fallback = rr.candidates
    assert primary.skip_kind == "no_gpu" and not primary.first
    assert primary.skip_reason == "no GPU: vllm needs one (NVML)"
    assert first(rr) is fallback and fallback.label == "fallback 1" and fallback.memory == "CPU"
    # A transformers model with n_gpu auto runs on the CPU where there is no GPU: it is not skipped.
    assert first(plan.step("chat")).label == "primary"
    assert first(plan.step("chat")).memory == "CPU (no GPU found: n_gpu auto runs it on the CPU)"
    assert plan.gpus == "none (NVML): GPU candidates are skipped"

    chosen = launchable(rr, m.candidates(0))
    assert [c.label for c in chosen.candidates] == ["fallback 1"]
    [skipped] = chosen.skipped
    assert (skipped.candidate, skipped.outcome, skipped.kind) == ("primary", "skipped", "no_gpu")
    assert skipped.reason == "no GPU: vllm needs one (NVML)"


def test_no_gpu_skips_an_explicit_n_gpu(tmp_path):
    m = manifest(tmp_path, chat(extra="n_gpu: 1"))
    step = make_plan(m, Observed(gpus=[], gpu_source="NVML")).step("chat")
    assert step.candidates[0].skip_reason == "no GPU: n_gpu/gpu_idx ask for one (NVML)"
    assert first(step).label == "fallback 1"


def test_unknown_gpus_skip_nothing_and_auto_falls_back_to_the_default(tmp_path):
    m = manifest(tmp_path, rerank("auto"))
    step = make_plan(m, Observed(gpus=None, gpu_source="GET /v1/cluster/info failed: HTTP 403")).step("rerank")
    primary = step.candidates[0]
    assert primary.first and primary.skip_reason is None
    assert primary.memory.startswith("unknown: GET /v1/cluster/info failed: HTTP 403")
    assert "auto -> 0.1 (provision's default for this role)" in primary.memory
    assert launchable(step, m.candidates(0)).candidates[0].gpu_memory_utilization == 0.1


# --------------------------------------------------------------------------------------------------
# One GPU with 6 GiB of 80 free


def test_vllm_share_larger_than_free_is_skipped_with_the_numbers(tmp_path):
    m = manifest(tmp_path, rerank("0.2"))
    step = make_plan(m, Observed(gpus=one_gpu(), gpu_source="NVML")).step("rerank")
    primary = step.candidates[0]
    assert primary.skip_kind == "oom"
    assert primary.skip_reason.startswith("needs ~16.0 GiB, 6.0 GiB free on GPU 0")
    assert "gpu_memory_utilization 0.2 x 80 GiB" in primary.skip_reason
    assert first(step).label == "fallback 1" and first(step).memory == "CPU"
    chosen = launchable(step, m.candidates(0))
    assert [a.kind for a in chosen.skipped] == ["oom"]


def test_auto_picks_the_largest_share_that_fits_and_says_so(tmp_path):
    m = manifest(tmp_path, rerank("auto"))
    observed = Observed(gpus=one_gpu(), gpu_source="NVML", listings=listing("AI-ModelScope/bge-reranker-v2-m3", 1.1))
    step = make_plan(m, observed).step("rerank")
    primary = step.candidates[0]
    # margin max(1 GiB, 2% of 80 GiB) = 1.6 GiB: (6.0 - 1.6) / 80 = 0.055 -> 0.05
    assert primary.first and primary.gpu_memory_utilization == 0.05
    assert primary.memory == "auto -> 0.05 (4.0 GiB of 80 GiB; 6.0 GiB free on GPU 0)"
    [sent, _] = launchable(step, m.candidates(0)).candidates
    assert sent.gpu_memory_utilization == 0.05 and sent.gpu_idx is None  # one GPU: Xinference places it


def test_auto_below_what_the_weights_need_is_skipped_with_the_numbers(tmp_path):
    m = manifest(tmp_path, chat(engine="vLLM", extra="gpu_memory_utilization: auto"))
    observed = Observed(gpus=one_gpu(), gpu_source="NVML", listings=listing("Qwen/Qwen3-4B-Instruct-2507", 7.5))
    step = make_plan(m, observed).step("chat")
    assert step.candidates[0].skip_reason == (
        "auto -> at most 0.05 (4.0 GiB of 80 GiB; 6.0 GiB free on GPU 0), less than the ~8.2 GiB the weights need")
    assert first(step).label == "fallback 1" and first(step).memory == "CPU"


EMBED = """\
  - role: embedding
    uid: emb
    name: bge-m3
    source: Xorbits/bge-m3
    engine: sentence_transformers
    n_gpu: auto
    fallbacks:
      - n_gpu: null
"""


def test_an_embedding_model_bigger_than_free_memory_is_skipped_with_the_numbers(tmp_path):
    m = manifest(tmp_path, EMBED)
    observed = Observed(gpus=one_gpu(free_gib=2), gpu_source="NVML", listings=listing("Xorbits/bge-m3", 2.1))
    step = make_plan(m, observed).step("emb")
    primary = step.candidates[0]
    assert primary.skip_kind == "oom"
    assert primary.skip_reason == "needs ~2.5 GiB, 2.0 GiB free on GPU 0 (weights 2.1 GiB x 1.2)"
    assert primary.weights == "not fetched: skipped (2.1 GiB)" and primary.bytes_to_fetch == int(2.1 * GiB) + 700
    assert first(step).label == "fallback 1" and first(step).memory == "CPU"
    # the fallback shares the folder and is now fetched up front
    assert first(step).weights == "download Xorbits/bge-m3 from modelscope (2.1 GiB)"


def test_a_transformers_llm_bigger_than_free_memory_is_offloaded_not_skipped(tmp_path):
    m = manifest(tmp_path, chat())
    observed = Observed(gpus=one_gpu(), gpu_source="NVML", listings=listing("Qwen/Qwen3-4B-Instruct-2507", 7.5))
    primary = make_plan(m, observed).step("chat").candidates[0]
    assert primary.first and primary.skip_reason is None
    assert primary.memory.startswith("partly on the CPU: needs ~9.0 GiB, 6.0 GiB free on GPU 0 (weights 7.5 GiB x 1.2)")
    assert "offloads what does not fit to CPU memory" in primary.memory


def test_a_small_model_fits_and_unknown_weights_skip_nothing(tmp_path):
    m = manifest(tmp_path, chat())
    fits = make_plan(m, Observed(gpus=one_gpu(), gpu_source="NVML",
                                 listings=listing("Qwen/Qwen3-4B-Instruct-2507", 1.0))).step("chat")
    assert first(fits).label == "primary"
    assert first(fits).memory == "fits: needs ~1.2 GiB (weights 1.0 GiB x 1.2), 6.0 GiB free on GPU 0"
    unknown = make_plan(m, Observed(gpus=one_gpu(), gpu_source="NVML")).step("chat")
    assert first(unknown).label == "primary"
    assert first(unknown).memory.startswith("unknown: weight size not known until the download lists the hub")


# --------------------------------------------------------------------------------------------------
# Two GPUs


def two_gpus() -> list[Gpu]:
    return StaticSource([Gpu(0, "A100", 80 * GiB, 70 * GiB), Gpu(1, "A100", 80 * GiB, 79 * GiB)]).gpus()


def test_two_gpus_colocated_shares_are_flagged_with_a_placement(tmp_path):
    pinned = chat("vLLM", "gpu_memory_utilization: 0.6\n    gpu_idx: 0")
    m = manifest(tmp_path, rerank("0.3") + "    gpu_idx: 0\n" + pinned)
    plan = make_plan(m, Observed(gpus=two_gpus(), gpu_source="NVML"))
    # each fits alone ...
    assert first(plan.step("rerank")).label == "primary" and first(plan.step("chat")).label == "primary"
    assert first(plan.step("chat")).memory == "fits: needs ~48.0 GiB (0.6 x 80 GiB), 70.0 GiB free on GPU 0"
    # ... but not together
    [warning] = plan.warnings
    assert warning == ("GPU 0: rerank 24.0 GiB + chat 48.0 GiB = 72.0 GiB together, 70.0 GiB free; "
                       "set gpu_idx: 1 on chat (79.0 GiB free on GPU 1)")
    # the manifest pinned them: up sends what the manifest says
    assert launchable(plan.step("chat"), m.candidates(1)).candidates[0].gpu_idx == 0


def test_two_gpus_unpinned_models_are_placed_by_free_memory_and_pinned(tmp_path):
    m = manifest(tmp_path, rerank("0.3") + chat("vLLM", "gpu_memory_utilization: 0.6"))
    plan = make_plan(m, Observed(gpus=two_gpus(), gpu_source="NVML"))
    rr, ch = first(plan.step("rerank")), first(plan.step("chat"))
    assert (rr.gpu_idx, ch.gpu_idx) == (1, 0)  # rerank takes the emptier GPU 1, chat the one left with more room
    assert rr.placed_by_plan and ch.placed_by_plan
    assert not plan.warnings
    assert launchable(plan.step("rerank"), m.candidates(0)).candidates[0].gpu_idx == 1
    assert launchable(plan.step("chat"), m.candidates(1)).candidates[0].gpu_idx == 0


def test_two_autos_on_one_gpu_share_what_is_free(tmp_path):
    m = manifest(tmp_path, rerank("auto") + chat("vLLM", "gpu_memory_utilization: auto"))
    observed = Observed(gpus=one_gpu(free_gib=40), gpu_source="NVML",
                        listings={**listing("AI-ModelScope/bge-reranker-v2-m3", 1.0),
                                  **listing("Qwen/Qwen3-4B-Instruct-2507", 8.0)})
    plan = make_plan(m, observed)
    rr, ch = first(plan.step("rerank")), first(plan.step("chat"))
    # 40 - 1.6 margin = 38.4 GiB, split by the weights' needs (1.1 : 8.8)
    assert (rr.gpu_memory_utilization, ch.gpu_memory_utilization) == (0.05, 0.42)
    assert rr.memory.endswith("40.0 GiB free on GPU 0, shared with rerank, chat)")
    assert (rr.need_bytes + ch.need_bytes) / GiB <= 40 - 1.6
    assert not plan.warnings


def test_gpu_idx_that_does_not_exist_is_skipped(tmp_path):
    m = manifest(tmp_path, rerank() + "    gpu_idx: 3\n")
    step = make_plan(m, Observed(gpus=two_gpus(), gpu_source="NVML")).step("rerank")
    assert step.candidates[0].skip_reason == "gpu_idx 3: no such GPU (found: 0, 1)"


# --------------------------------------------------------------------------------------------------
# A remote server: cluster info, engines


ENDPOINT = "http://10.0.0.5:9997"
CLUSTER_INFO = [
    {"node_type": "Supervisor", "ip_address": "10.0.0.5:9997", "gpu_count": 0, "gpu_vram_total": 0},
    {"node_type": "Worker", "ip_address": "10.0.0.6:30001", "gpu_count": 1,
     "gpu_vram_total": 80 * GiB, "gpu_vram_available": 6 * GiB},
]


@responses.activate
def test_a_remote_servers_cluster_info_decides_the_memory_verdict(tmp_path):
    responses.get(f"{ENDPOINT}/v1/cluster/info?detailed=true", json=CLUSTER_INFO)
    gpus = ClusterInfoSource(XinferenceClient(ENDPOINT)).gpus()
    m = manifest(tmp_path, rerank("0.2"), server=f"server:\n  endpoint: {ENDPOINT}\n")
    step = make_plan(m, Observed(gpus=gpus, gpu_source="/v1/cluster/info")).step("rerank")
    assert step.candidates[0].skip_reason.startswith("needs ~16.0 GiB, 6.0 GiB free on GPU 0 of 10.0.0.6:30001")
    assert first(step).label == "fallback 1"


@responses.activate
def test_observe_asks_a_reachable_server_for_engines_and_gpus(tmp_path):
    responses.get(f"{ENDPOINT}/v1/models", json={"object": "list", "data": []})
    responses.get(f"{ENDPOINT}/v1/engines/rerank/bge-reranker-v2-m3",
                  json={"vllm": VLLM_MISSING, "sentence_transformers": ST_PARAMS})
    responses.get(f"{ENDPOINT}/v1/cluster/info?detailed=true", json=CLUSTER_INFO)
    m = manifest(tmp_path, rerank("0.05"), server=f"server:\n  endpoint: {ENDPOINT}\n")
    observed = observe(m, None)
    assert observed.engines == {("rerank", "bge-reranker-v2-m3"): {"vllm": VLLM_MISSING,
                                                                    "sentence_transformers": ST_PARAMS}}
    assert [g.free_bytes for g in observed.gpus] == [6 * GiB]
    step = make_plan(m, observed).step("rerank")
    assert step.candidates[0].skip_kind == "engine_missing"
    assert step.candidates[0].skip_reason == f"engine vllm is not usable on this server: {VLLM_MISSING}"
    assert first(step).label == "fallback 1" and first(step).engine_check == "ok"


@responses.activate
def test_observe_leaves_gpus_unknown_when_cluster_info_is_refused(tmp_path):
    responses.get(f"{ENDPOINT}/v1/models", json={"object": "list", "data": []})
    responses.get(f"{ENDPOINT}/v1/engines/rerank/bge-reranker-v2-m3", status=400, json={"detail": "not found"})
    responses.get(f"{ENDPOINT}/v1/cluster/info?detailed=true", status=403, json={"detail": "no admin scope"})
    m = manifest(tmp_path, rerank("0.2"), server=f"server:\n  endpoint: {ENDPOINT}\n")
    observed = observe(m, None)
    assert observed.gpus is None and "HTTP 403" in observed.gpu_source
    step = make_plan(m, observed).step("rerank")
    assert first(step).label == "primary"  # nothing known against it
    assert step.candidates[0].engine_check.startswith("unknown: the server lists no engines")


def test_engine_matrix_without_vllm_skips_it_quoting_the_reason(tmp_path):
    m = manifest(tmp_path, rerank("0.05"))
    engines = {("rerank", "bge-reranker-v2-m3"): {"vllm": VLLM_MISSING, "sentence_transformers": ST_PARAMS}}
    step = make_plan(m, Observed(gpus=one_gpu(), gpu_source="NVML", engines=engines)).step("rerank")
    primary, fallback = step.candidates
    assert primary.engine_check == f"not usable: {VLLM_MISSING}"
    assert primary.skip_kind == "engine_missing" and VLLM_MISSING in primary.skip_reason
    assert fallback.first and fallback.engine_check == "ok"
    [skipped] = launchable(step, m.candidates(0)).skipped
    assert skipped.kind == "engine_missing" and skipped.reason.endswith(VLLM_MISSING)


def test_an_engine_the_server_does_not_offer_is_skipped(tmp_path):
    m = manifest(tmp_path, rerank("0.05"))
    engines = {("rerank", "bge-reranker-v2-m3"): {"sentence_transformers": ST_PARAMS}}
    primary = make_plan(m, Observed(gpus=one_gpu(), engines=engines)).step("rerank").candidates[0]
    assert primary.skip_kind == "engine_unsupported"
    assert primary.skip_reason == "Xinference has no vllm engine for bge-reranker-v2-m3; it has: sentence_transformers"


def test_engines_are_pending_while_no_server_answers(tmp_path):
    m = manifest(tmp_path, rerank("0.05"))
    primary = make_plan(m, Observed(gpus=one_gpu())).step("rerank").candidates[0]
    assert primary.engine_check == "pending: no server answers yet; `up` asks it right after it starts"
    assert primary.first


# --------------------------------------------------------------------------------------------------
# keep / relaunch / terminate


def running(m, index: int, uid: str, **kw) -> ModelRecord:
    return ModelRecord(role=m.models[index].role, uid=uid, model_type="LLM", status="running", candidate="primary",
                       engine="vLLM", chain_key=kw.pop("key", chain_key(m.candidates(index))), **kw)


def test_keep_relaunch_terminate(tmp_path):
    m = manifest(tmp_path, rerank("0.05") + chat("vLLM", "gpu_memory_utilization: 0.6"))
    server = ServerRecord(url="http://127.0.0.1:9997", managed=True)
    previous = State(manifest="m.yml", name="t", server=server, models=[
        running(m, 0, "rerank"), running(m, 1, "chat", key="older"), running(m, 1, "gone")])
    observed = Observed(previous=previous, server_reusable=True, running_uids={"rerank", "chat", "gone"},
                        gpus=one_gpu(free_gib=30), gpu_source="NVML")
    plan = make_plan(m, observed)
    actions = {s.uid: (s.action, s.reason) for s in plan.steps}
    assert actions["rerank"] == (KEEP, "running since the last `up` (primary, vLLM)")
    assert actions["chat"] == (RELAUNCH, "its manifest entry changed")
    assert actions["gone"] == (TERMINATE, "no longer in the manifest")
    # the relaunch frees the running chat's memory first: 48 GiB > 30 GiB free is not a reason to skip
    chat_primary = plan.step("chat").candidates[0]
    assert chat_primary.first and chat_primary.skip_reason is None
    assert chat_primary.memory.startswith("may not fit (needs ~48.0 GiB, 30.0 GiB free on GPU 0")
    assert not any(c.first for c in plan.step("rerank").candidates)  # kept: nothing to try


def test_a_model_the_server_lost_is_launched_again(tmp_path):
    m = manifest(tmp_path, rerank("0.05"))
    previous = State(manifest="m.yml", name="t", models=[running(m, 0, "rerank")])
    plan = make_plan(m, Observed(previous=previous, server_reusable=True, running_uids=set(), gpus=one_gpu()))
    assert (plan.step("rerank").action, plan.step("rerank").reason) == (LAUNCH, "the server no longer runs it")


# --------------------------------------------------------------------------------------------------
# What up tries, disk, the printed plan


def test_every_candidate_skipped_leaves_nothing_to_try_and_warns(tmp_path):
    m = manifest(tmp_path, RERANK.format(share="0.2").replace("      - engine: transformers\n",
                                                               "      - gpu_memory_utilization: 0.3\n"))
    plan = make_plan(m, Observed(gpus=[], gpu_source="NVML"))
    assert plan.warnings == ["rerank: every candidate is skipped; `up` will report it failed"]
    chosen = launchable(plan.step("rerank"), m.candidates(0))
    assert chosen.candidates == [] and [a.candidate for a in chosen.skipped] == ["primary", "fallback 1"]


def test_launchable_attempts_merge_in_chain_order(tmp_path):
    from provision.state import AttemptRecord

    m = manifest(tmp_path, rerank("0.2"))
    step = make_plan(m, Observed(gpus=[], gpu_source="NVML")).step("rerank")
    chosen = launchable(step, m.candidates(0))
    tried = [AttemptRecord("fallback 1", "bge-reranker-v2-m3", "sentence_transformers", "ready")]
    merged = [(a.candidate, a.outcome) for a in chosen.attempts(tried)]
    assert merged == [("primary", "skipped"), ("fallback 1", "ready")]


def test_disk_needed_against_free_space(tmp_path):
    m = manifest(tmp_path, chat())
    observed = Observed(gpus=[], listings=listing("Qwen/Qwen3-4B-Instruct-2507", 7.5), disk_free=5 * GiB)
    plan = make_plan(m, observed)
    assert plan.disk == f"7.5 GiB to fetch into {tmp_path / 'models'}, 5.0 GiB free"
    assert plan.warnings == [
        f"not enough disk space in {tmp_path / 'models'}: the downloads need 7.5 GiB, 5.0 GiB free"]


def test_present_weights_count_from_the_local_folder(tmp_path):
    m = manifest(tmp_path, chat())
    folder = m.candidates(0)[0].folder
    local = {"config.json": 700, "model.safetensors": 7 * GiB, "pytorch_model.bin": 7 * GiB}
    observed = Observed(gpus=one_gpu(free_gib=20), folders_with_model={folder}, local_files={folder: local})
    primary = make_plan(m, observed).step("chat").candidates[0]
    assert primary.weights == "present" and primary.bytes_to_fetch == 0
    assert primary.weight_bytes == 7 * GiB  # safetensors only: the .bin is the same weights again
    assert primary.memory == "fits: needs ~8.4 GiB (weights 7.0 GiB x 1.2), 20.0 GiB free on GPU 0"


def test_weight_bytes_pick_one_format_and_one_quantization():
    assert weight_bytes({"a.safetensors": 5, "b.safetensors": 6, "pytorch_model.bin": 11, "x.json": 1}) == 11
    gguf = {"m-q4_k_m.gguf": 4, "m-q8_0.gguf": 8, "m-f16.gguf": 16}
    assert weight_bytes(gguf, "q4_k_m") == 4
    assert weight_bytes(gguf) == 16
    assert weight_bytes({"README.md": 3}) is None


def test_plan_lines_show_first_skip_and_verdicts(tmp_path):
    m = manifest(tmp_path, rerank("0.2"))
    lines = plan_lines(make_plan(m, Observed(gpus=one_gpu(), gpu_source="NVML")))
    text = "\n".join(lines)
    assert "  GPUs: GPU 0 NVIDIA A100-SXM4-80GB: 6.0 GiB free of 80 GiB (NVML)" in lines
    assert "skip  primary     bge-reranker-v2-m3 on vllm: needs ~16.0 GiB, 6.0 GiB free on GPU 0" in text
    assert "first fallback 1  bge-reranker-v2-m3 on sentence_transformers: weights download" in text
    assert "engine pending: no server answers yet" in text and "memory CPU" in text


# --------------------------------------------------------------------------------------------------
# `provision plan` lists the hub: bytes to fetch from a real (local) ModelScope mirror


def test_plan_only_reads_sizes_from_the_hub_listing(tmp_path, monkeypatch):
    root = tmp_path / "mirror" / "acme" / "tiny-chat"
    root.mkdir(parents=True)
    (root / "config.json").write_bytes(b"{}")
    (root / "model.safetensors").write_bytes(b"\0" * 3 * 1024 * 1024)
    monkeypatch.setattr(observe_module, "NvmlSource", lambda visible: StaticSource(one_gpu(free_gib=1)))
    with MirrorServer(tmp_path / "mirror").start() as mirror:
        text = (f"version: 1\nname: t\ndownload:\n  endpoint: {mirror.url}\nmodels:\n"
                + chat().replace("Qwen/Qwen3-4B-Instruct-2507", "acme/tiny-chat")
                + "roles: {chat: 1, embedding: 0, rerank: 0}\n")
        (tmp_path / "m.yml").write_text(text)
        plan = plan_only(str(tmp_path / "m.yml"), StateDir(tmp_path / ".provision"))
    primary = plan.step("chat").candidates[0]
    assert primary.bytes_to_fetch == 3 * 1024 * 1024 + 2
    assert primary.weights == f"download acme/tiny-chat from {mirror.url} (3.0 MiB)"
    assert primary.first and primary.memory == "fits: needs ~0.0 GiB (weights 0.0 GiB x 1.2), 1.0 GiB free on GPU 0"
    assert plan.disk.startswith("3.0 MiB to fetch into ")


def test_plan_only_records_an_unreachable_hub_as_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(retry, "ATTEMPTS", 1)
    text = ("version: 1\nname: t\ndownload:\n  endpoint: http://127.0.0.1:9\nmodels:\n" + chat()
            + "roles: {chat: 1, embedding: 0, rerank: 0}\n")
    (tmp_path / "m.yml").write_text(text)
    plan = plan_only(str(tmp_path / "m.yml"), StateDir(tmp_path / ".provision"))
    primary = plan.step("chat").candidates[0]
    assert primary.bytes_to_fetch is None
    assert primary.weights.endswith("(size unknown: cannot reach http://127.0.0.1:9)")
    assert primary.first


def test_autos_that_cannot_all_fit_leave_the_lower_model_to_its_fallback(tmp_path):
    m = manifest(tmp_path, rerank("auto") + chat("vLLM", "gpu_memory_utilization: auto"))
    observed = Observed(gpus=one_gpu(free_gib=8), gpu_source="NVML",
                        listings={**listing("AI-ModelScope/bge-reranker-v2-m3", 1.0),
                                  **listing("Qwen/Qwen3-4B-Instruct-2507", 5.6)})
    plan = make_plan(m, observed)
    # alone each would fit (8 - 1.6 = 6.4 GiB); together 1.1 + 6.2 GiB (0.02 + 0.08) do not: chat gives way
    assert first(plan.step("rerank")).label == "primary"
    assert first(plan.step("rerank")).gpu_memory_utilization == 0.08  # all 8 units (6.4 GiB) go to rerank
    chat_primary = plan.step("chat").candidates[0]
    assert chat_primary.skip_kind == "oom" and chat_primary.skip_reason == (
        "auto -> at most 0.06 (4.8 GiB of 80 GiB; 8.0 GiB free on GPU 0, shared with rerank, chat), "
        "less than the ~6.2 GiB the weights need")
    assert first(plan.step("chat")).label == "fallback 1"
    assert first(plan.step("chat")).weights == "download Qwen/Qwen3-4B-Instruct-2507 from modelscope (5.6 GiB)"
