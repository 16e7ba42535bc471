"""The catalog: Xinference's built-in models, checked against the manifest before anything is fetched.

Against the shipped snapshot (the client-only install's catalog), so the answers do not depend on what is
installed: did-you-mean for names, sizes, roles and hub ids; sources taken from the catalog for both hubs;
weights on disk against the name; the memory arithmetic of two real families; and the snapshot against
the pinned package.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.catalog import Catalog, memory, sources, weights
from provision.errors import ManifestError
from provision.gpu import GiB, Gpu
from provision.manifest import parse
from provision.manifest.catalog import apply_catalog
from provision.observe import Observed
from provision.plan import make_plan

SNAPSHOT = sources.from_snapshot()
# The snapshot's families as a catalog that is the truth for its server: unknown names are errors.
TRUTH = Catalog(SNAPSHOT.families, SNAPSHOT.source, SNAPSHOT.version, authoritative=True)


def manifest(models: str, *, hub: str = "modelscope", roles: str | None = None):
    counts = {role: models.count(f"role: {role}") for role in ("chat", "embedding", "rerank")}
    roles = roles or "roles: {" + ", ".join(f"{r}: {n}" for r, n in counts.items()) + "}"
    return parse(f"version: 1\nname: t\ndownload:\n  hub: {hub}\nmodels:\n{models}{roles}\n", file="m.yml",
                 environ={})


def problems(models: str, catalog: Catalog = TRUTH) -> list[str]:
    with pytest.raises(ManifestError) as info:
        apply_catalog(manifest(models), catalog)
    return [p.render("m.yml") for p in info.value.problems]


CHAT = "  - role: chat\n    uid: chat\n    name: {name}\n    engine: vLLM\n{extra}"


# -- names --------------------------------------------------------------------------------------------------

def test_a_hub_model_name_is_not_a_built_in_name_and_the_family_is_named():
    [problem] = problems(CHAT.format(name="Qwen3-4B", extra="    source: Qwen/Qwen3-4B-Instruct-2507\n"))
    assert problem.startswith("m.yml:8: models[0].name: `Qwen3-4B` is not a built-in LLM in provision's snapshot")
    assert "did you mean `Qwen3-Instruct` (size_in_billions 4)" in problem


def test_without_a_source_the_hub_ids_say_which_families_have_that_model():
    [problem] = problems(CHAT.format(name="Qwen3-4B", extra=""))
    assert "`qwen3` (size_in_billions 4)" in problem and "`Qwen3-Instruct` (size_in_billions 4)" in problem


def test_a_name_in_the_wrong_case_with_a_size_it_lacks():
    [problem] = problems(CHAT.format(name="qwen3-instruct", extra="    size_in_billions: 7\n"))
    assert "did you mean `Qwen3-Instruct`, which has no size_in_billions 7 (it offers 4, 30, 235)" in problem


def test_a_modelscope_id_given_as_name_names_the_built_in_model():
    [problem] = problems(CHAT.format(name="Qwen/Qwen3-4B-Instruct-2507", extra=""))
    assert "`Qwen/Qwen3-4B-Instruct-2507` is a hub id, not a built-in LLM name" in problem
    assert "the built-in name is `Qwen3-Instruct` (size_in_billions 4), with source: Qwen/Qwen3-4B-Instruct-2507" in problem


def test_a_reranker_named_as_an_embedding_model_is_said_to_be_one():
    [problem] = problems("  - role: embedding\n    uid: e\n    name: bge-reranker-v2-m3\n")
    assert "`bge-reranker-v2-m3` is a rerank model, not an embedding model (role: embedding)" in problem
    assert "give it role: rerank, or an embedding model here" in problem
    [problem] = problems("  - role: chat\n    uid: c\n    name: bge-m3\n    engine: vLLM\n")
    assert "`bge-m3` is an embedding model, not an LLM (role: chat)" in problem


def test_from_the_snapshot_an_unknown_name_is_a_warning_that_says_so():
    m = manifest(CHAT.format(name="qwen9-imaginary", extra="    source: acme/q9\n"))
    [warning] = apply_catalog(m, SNAPSHOT)
    assert "not a built-in LLM in provision's snapshot of xinference 4.1.0" in warning
    assert "a server of another version may have it" in warning


def test_a_model_without_the_chat_ability_cannot_be_the_chat_model():
    generate_only = next(f for f in SNAPSHOT.of_type("LLM") if "chat" not in f.abilities and f.specs)
    spec = generate_only.specs[0]
    [problem] = problems(CHAT.format(name=generate_only.name, extra=f"    size_in_billions: '{spec.size}'\n"
                                     f"    format: {spec.format}\n    source: acme/m\n"))
    assert "has no chat ability" in problem


# -- specs --------------------------------------------------------------------------------------------------

def test_a_size_format_or_quantization_the_family_lacks_lists_what_it_offers():
    [size] = problems(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 8\n"))
    assert "models[0].size_in_billions: `Qwen3-Instruct` has no size_in_billions 8 (it offers size_in_billions 4, 30, 235)" in size
    [fmt] = problems(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    format: onnx\n"))
    assert "models[0].format: `Qwen3-Instruct` 4B has no format onnx (it offers format pytorch, fp8" in fmt
    [quant] = problems(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    format: pytorch\n"
                                                             "    quantization: Int3\n"))
    assert "has no quantization Int3 (it offers quantization none)" in quant


# -- sources ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hub, source", [("modelscope", "Xorbits/bge-m3"), ("huggingface", "BAAI/bge-m3")])
def test_a_left_out_source_is_the_catalogs_for_the_hub(hub, source):
    m = manifest("  - role: embedding\n    uid: e\n    name: bge-m3\n", hub=hub)
    assert apply_catalog(m, SNAPSHOT) == []
    [candidate] = m.candidates(0)
    assert candidate.source == source and candidate.folder.parts[-2:] == tuple(source.split("/"))
    assert candidate.source_from_catalog == f"from the catalog ({SNAPSHOT.source})"
    step = make_plan(m, Observed(gpus=[])).steps[0].candidates[0]
    assert any("source Xorbits/bge-m3" in n or "source BAAI/bge-m3" in n for n in step.notes)


def test_a_left_out_source_follows_the_size():
    m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n"))
    apply_catalog(m, SNAPSHOT)
    assert m.candidates(0)[0].source == "Qwen/Qwen3-4B-Instruct-2507"


def test_a_source_the_catalog_does_not_list_is_accepted_with_a_note():
    m = manifest("  - role: embedding\n    uid: e\n    name: bge-m3\n    source: acme/bge-m3-finetuned\n")
    [note] = apply_catalog(m, TRUTH)
    assert "source acme/bge-m3-finetuned is not the catalog's modelscope id for `bge-m3` (Xorbits/bge-m3, " in note
    assert "fine for a fine-tune or a mirror" in note


def test_every_spec_of_a_family_is_kept_even_two_of_one_format_and_size():
    # qwen3 0.6B has two gptq specs (Int8 and Int4, different repos); both are real
    m = manifest(CHAT.format(name="qwen3", extra="    size_in_billions: 0.6\n    format: gptq\n    quantization: Int8\n"))
    assert apply_catalog(m, TRUTH) == []
    assert m.candidates(0)[0].source == "Qwen/Qwen3-0.6B-GPTQ-Int8"


def test_the_official_repo_is_the_source_not_a_later_spec_of_the_same_size():
    m = manifest(CHAT.format(name="llama-3.1-instruct", extra="    size_in_billions: 8\n    format: pytorch\n"),
                 hub="huggingface")
    assert apply_catalog(m, TRUTH) == []
    assert m.candidates(0)[0].source == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    m = manifest(CHAT.format(name="llama-3.1-instruct", extra="    size_in_billions: 8\n    format: pytorch\n"
                                                              "    source: meta-llama/Meta-Llama-3.1-8B-Instruct\n"),
                 hub="huggingface")
    assert apply_catalog(m, TRUTH) == []  # the catalog's own id: no note


def test_a_templated_hub_id_is_filled_in_with_the_quantization():
    m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    format: gptq\n"
                                                          "    quantization: Int4\n"))
    assert apply_catalog(m, TRUTH) == []
    candidate = m.candidates(0)[0]
    assert candidate.source == "JunHowie/Qwen3-4B-Instruct-2507-GPTQ-Int4"
    assert candidate.folder.name == "Qwen3-4B-Instruct-2507-GPTQ-Int4"


def test_a_templated_hub_id_without_a_quantization_asks_for_one():
    [problem] = problems(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    format: gptq\n"))
    assert "models[0].quantization" in problem
    assert "Int4, Int8" in problem


def test_a_gguf_source_is_not_derived_the_repo_holds_every_quantization():
    [problem] = problems(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    format: ggufv2\n"
                                                                  "    quantization: Q4_K_M\n"))
    assert "models[0].source" in problem and "every quantization" in problem


def test_a_family_of_several_sizes_needs_a_size_when_the_source_is_left_out():
    [problem] = problems(CHAT.format(name="Qwen3-Instruct", extra=""))
    assert "models[0].size_in_billions" in problem
    assert "4, 30, 235" in problem


def test_a_given_source_names_the_spec_the_estimate_is_made_for():
    m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    source: Qwen/Qwen3-4B-Instruct-2507\n"
                                                          "    gpu_memory_utilization: auto\n"
                                                          "    options: {max_model_len: 8192}\n"))
    apply_catalog(m, SNAPSHOT)
    gpu = Gpu(0, "L40S", 48 * GiB, 46 * GiB)
    candidate = make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0]
    assert not candidate.skip_reason, candidate.memory
    assert "4 B parameters" in candidate.memory


@pytest.mark.parametrize("name", ["Qwen/Qwen3-4B-Instruct-2507", "acme/whatever"])
def test_a_hub_id_as_name_is_an_error_from_any_catalog(name):
    with pytest.raises(ManifestError) as info:
        apply_catalog(manifest(CHAT.format(name=name, extra="")), SNAPSHOT)
    assert "is a hub id, not a built-in LLM name" in info.value.problems[0].render("m.yml")


def test_an_unknown_name_without_source_is_an_error_even_from_the_snapshot():
    m = manifest("  - role: embedding\n    uid: e\n    name: my-embedder\n")
    with pytest.raises(ManifestError) as info:
        apply_catalog(m, SNAPSHOT)
    said = [p.render("m.yml") for p in info.value.problems]
    assert any("models[0].source" in p and "source" in p for p in said), said


def test_the_no_source_message_says_the_size_as_written():
    m = manifest(CHAT.format(name="qwen2.5-instruct", extra="    size_in_billions: 0.5\n"), hub="huggingface")
    catalog = Catalog([f for f in TRUTH.families if f.name != "qwen2.5-instruct"] + [
        _without_hub(TRUTH.family("LLM", "qwen2.5-instruct"), "huggingface")], TRUTH.source, TRUTH.version)
    with pytest.raises(ManifestError) as info:
        apply_catalog(m, catalog)
    said = info.value.problems[0].render("m.yml")
    assert "0.5B" in said and "0_5" not in said


def _without_hub(family, hub):
    from dataclasses import replace

    specs = tuple(replace(s, sources={h: v for h, v in s.sources.items() if h != hub}) for s in family.specs)
    return replace(family, specs=specs)


def test_a_dotted_version_is_not_read_as_another_number():
    choices = [f.name for f, _ in TRUTH.suggestions("LLM", "qwen2.5-7b")]
    assert choices[0] in ("qwen2.5", "qwen2.5-instruct") and "qwen2-moe-instruct" not in choices


# -- weights against the name -------------------------------------------------------------------------------

def folder(tmp_path: Path, config: dict, pooling: int | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if pooling:
        (tmp_path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": pooling}))
    return tmp_path


MINILM = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "max_position_embeddings": 512}
QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2560,
         "max_position_embeddings": 262144}


def test_a_384_dimension_folder_is_not_bge_m3_and_the_fitting_names_are_given(tmp_path):
    found = weights.verdict(SNAPSHOT, "embedding", "bge-m3", folder(tmp_path, MINILM, pooling=384))
    problem, hint = found
    assert problem == "the weights give 384-dimension vectors, `bge-m3` is 1024"
    assert "`bge-small-en-v1.5`" in hint and "accept_weights_mismatch: true" in hint
    assert weights.verdict(SNAPSHOT, "embedding", "bge-small-en-v1.5", tmp_path) is None


def test_a_qwen3_folder_under_a_qwen2_5_name_is_refused_and_under_qwen3_accepted(tmp_path):
    qwen3 = folder(tmp_path, QWEN3)
    problem, hint = weights.verdict(SNAPSHOT, "LLM", "qwen2.5-instruct", qwen3)
    assert problem == "the weights are Qwen3ForCausalLM, `qwen2.5-instruct` is Qwen2ForCausalLM"
    assert "`qwen3`" in hint or "`Qwen3-Instruct`" in hint
    assert weights.verdict(SNAPSHOT, "LLM", "Qwen3-Instruct", qwen3) is None  # Qwen3Moe family: the same lineage


def test_a_mismatched_folder_is_skipped_by_the_plan_unless_accepted(tmp_path):
    weights_folder = folder(tmp_path / "w", MINILM, pooling=384)
    entry = f"  - role: embedding\n    uid: e\n    name: bge-m3\n    local_path: {weights_folder}\n"
    for extra, skipped in (("", True), ("    accept_weights_mismatch: true\n", False)):
        m = manifest(entry + extra)
        apply_catalog(m, SNAPSHOT)
        facts = {weights_folder: weights.read_facts(weights_folder)}
        step = make_plan(m, Observed(gpus=[], folders_with_model={weights_folder}, weight_facts=facts)).steps[0]
        candidate = step.candidates[0]
        assert (candidate.skip_kind == "weights_mismatch") is skipped
        assert "384-dimension" in (candidate.skip_reason or " ".join(candidate.notes))


# -- memory -------------------------------------------------------------------------------------------------

def spec_of(name: str, size) -> tuple:
    family = SNAPSHOT.family("LLM", name)
    return family, SNAPSHOT.specs(family, size=size, format="pytorch")[0]


def test_the_memory_of_a_4b_model_from_its_metadata():
    family, spec = spec_of("Qwen3-Instruct", 4)
    estimate = memory.estimate(family, spec, quantization="none", options={"max_model_len": 32768})
    assert estimate.weights == 8_000_000_000  # 4e9 parameters x 2 bytes
    assert estimate.kv.bytes_per_token == 36 * 8 * 128 * 2 * 2 == 147_456
    assert estimate.kv_bytes == 147_456 * 32768
    assert estimate.need == 8_000_000_000 + 147_456 * 32768 + GiB
    assert "36 layers x 8 KV heads x 128 x 2 x 2 B = 144 KiB per token" in estimate.arithmetic()
    # 12 GiB of room: weights 7.45 GiB + engine 1 GiB leave 3.55 GiB, 25,856 tokens -> 25,600
    assert estimate.largest_context(lambda need: need <= 12 * GiB) == 25600


def test_the_memory_of_a_half_b_model_and_its_default_context():
    family, spec = spec_of("qwen2.5-instruct", "0_5")
    estimate = memory.estimate(family, spec, quantization=None, options={})
    assert estimate.weights == 1_000_000_000 and estimate.context == 32768
    assert estimate.kv.bytes_per_token == 24 * 2 * 64 * 2 * 2 == 12_288  # head_dim 896 / 14
    assert estimate.context_said == "the family's context_length"


def test_auto_takes_the_smallest_share_that_holds_the_model_and_says_the_arithmetic(tmp_path):
    m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    gpu_memory_utilization: auto\n"
                                                          "    options: {max_model_len: 32768}\n"))
    apply_catalog(m, SNAPSHOT)
    gpu = Gpu(0, "H200", 140 * GiB, 60 * GiB)
    candidate = make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0]
    need = (8_000_000_000 + 147_456 * 32768 + GiB) * 1.10
    assert candidate.gpu_memory_utilization == pytest.approx(-(-need / (140 * GiB) * 100 // 1) / 100)
    assert candidate.memory.startswith(f"auto -> {candidate.gpu_memory_utilization:.2f}")
    assert "KV cache 4.5 GiB for max_model_len 32768" in candidate.memory


def test_auto_that_cannot_fit_says_the_largest_max_model_len_that_would():
    m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    gpu_memory_utilization: auto\n"))
    apply_catalog(m, SNAPSHOT)
    gpu = Gpu(0, "A100", 80 * GiB, 16 * GiB)  # the family's 262144 tokens need 36 GiB of cache
    candidate = make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0]
    assert candidate.skip_kind == "oom"
    assert "the largest max_model_len that fits is" in candidate.skip_reason
    assert "options: {max_model_len:" in candidate.skip_reason


def test_a_transformers_candidate_without_a_listing_is_sized_from_the_catalog_spec():
    m = manifest("  - role: chat\n    uid: chat\n    name: Qwen3-Instruct\n    size_in_billions: 4\n"
                 "    engine: Transformers\n    n_gpu: auto\n")
    apply_catalog(m, SNAPSHOT)
    small = Gpu(0, "T4", 16 * GiB, 6 * GiB)
    candidate = make_plan(m, Observed(gpus=[small], gpu_source="NVML")).steps[0].candidates[0]
    assert candidate.memory.startswith("partly on the CPU: needs ~8.9 GiB")  # 8e9 B x 1.2, Transformers offloads
    assert "weights 7.5 GiB from the catalog (4 B parameters x 2.00 B) x 1.2" in candidate.memory
    roomy = Gpu(0, "L40S", 48 * GiB, 40 * GiB)
    candidate = make_plan(m, Observed(gpus=[roomy], gpu_source="NVML")).steps[0].candidates[0]
    assert candidate.memory.startswith("fits: needs ~8.9 GiB")


def test_the_suggested_max_model_len_fits_when_it_is_used():
    for free_gib in [11 + 0.25 * i for i in range(116)]:
        m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    gpu_memory_utilization: auto\n"))
        apply_catalog(m, SNAPSHOT)
        gpu = Gpu(0, "A100", 80 * GiB, int(free_gib * GiB))
        candidate = make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0]
        if candidate.skip_kind != "oom" or "largest max_model_len that fits is" not in candidate.skip_reason:
            continue
        length = int(candidate.skip_reason.split("largest max_model_len that fits is ")[1].split()[0])
        m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    gpu_memory_utilization: auto\n"
                                                              f"    options: {{max_model_len: {length}}}\n"))
        apply_catalog(m, SNAPSHOT)
        again = make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0]
        assert again.skip_kind is None, (free_gib, length, again.memory)
        # and it is the largest: 1024 more does not fit
        m = manifest(CHAT.format(name="Qwen3-Instruct", extra="    size_in_billions: 4\n    gpu_memory_utilization: auto\n"
                                                              f"    options: {{max_model_len: {length + 1024}}}\n"))
        apply_catalog(m, SNAPSHOT)
        assert make_plan(m, Observed(gpus=[gpu], gpu_source="NVML")).steps[0].candidates[0].skip_kind == "oom"


def test_mla_attention_has_no_kv_estimate_rather_than_a_wrong_one():
    family, spec = spec_of("deepseek-v2-chat", 16)
    estimate = memory.estimate(family, spec, quantization="none", options={"max_model_len": 8192})
    assert estimate.kv is None and "MLA" in estimate.context_said


def test_hybrid_attention_counts_only_the_full_attention_layers():
    family = SNAPSHOT.family("LLM", "qwen3.5")
    spec = next(s for s in family.specs if memory.kv_cache(s) is not None)
    meta = next(iter(spec.sources.values())).metadata
    kv = memory.kv_cache(spec)
    assert kv.layers == meta["num_hidden_layers"] // meta["full_attention_interval"]


def test_listed_weight_files_beat_the_catalogs_size():
    # moonlight-16b-a3b-instruct says 3 (B, activated) in the catalog; its files weigh 32 GB
    from provision.plan.gpu_fit import GpuLedger

    m = manifest(CHAT.format(name="moonlight-16b-a3b-instruct", extra="    size_in_billions: 3\n"))
    apply_catalog(m, SNAPSHOT)
    estimate = GpuLedger([], catalog=SNAPSHOT, hub="modelscope").estimate(m.candidates(0)[0], 32 * 10**9)
    assert estimate.weights == 32 * 10**9 and estimate.weights_said == "the listed weight files"


# -- the snapshot -------------------------------------------------------------------------------------------

def test_the_snapshot_is_the_pinned_packages_catalog():
    package = sources.from_package()
    if package is None:
        pytest.skip("xinference is not installed: nothing to compare the snapshot with")
    assert package.version == sources.PINNED_XINFERENCE == SNAPSHOT.version
    assert sources.snapshot_document(package) == sources.SNAPSHOT.read_bytes(), \
        "the snapshot is stale: run scripts/catalog_snapshot.py"


def test_the_pin_is_the_one_pyproject_installs():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"xinference=={sources.PINNED_XINFERENCE}"' in text


def test_every_answer_says_where_it_came_from():
    assert SNAPSHOT.source == "provision's snapshot of xinference 4.1.0" and not SNAPSHOT.authoritative
    package = sources.from_package()
    if package is not None:
        assert package.source == f"xinference {package.version} (installed)" and package.authoritative


# -- RAGFlow's numbers ----------------------------------------------------------------------------------------

class _Described:
    def __init__(self, facts: dict):
        self.facts = facts

    def describe(self, uid):
        return self.facts


@pytest.mark.parametrize("described", [{"context_length": 262144}, {}])
def test_max_tokens_for_ragflow_is_the_max_model_len_the_model_was_launched_with(described):
    from provision.apply.models import _read_model_facts
    from provision.state import ModelRecord

    record = ModelRecord(role="chat", uid="chat", model_type="LLM", status="running", name="Qwen3-Instruct",
                         payload={"model_name": "Qwen3-Instruct", "max_model_len": 8192})
    _read_model_facts(_Described(described), record, SNAPSHOT)
    assert record.context_length == 8192
    assert record.numbers_from["context_length"].startswith("the launch's max_model_len")


# -- weights: what sentence-transformers and the config say ---------------------------------------------------

def test_a_dense_module_sets_the_output_size(tmp_path):
    out = folder(tmp_path, {**MINILM, "hidden_size": 1024}, pooling=1024)
    modules = json.loads((out / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "2_Dense").mkdir()
    (out / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 1024, "out_features": 768}))
    assert weights.read_facts(out).dimensions == 768
    assert weights.verdict(SNAPSHOT, "embedding", "bge-base-en-v1.5", out) is None


def test_a_short_max_seq_length_is_said_not_refused(tmp_path):
    # all-MiniLM-L6-v2 keeps 256 tokens though its positions allow 512: worth saying, no reason to refuse
    out = folder(tmp_path, {**MINILM, "hidden_size": 1024, "max_position_embeddings": 8194}, pooling=1024)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    assert weights.verdict(SNAPSHOT, "embedding", "bge-m3", out) is None
    [remark] = weights.remarks(SNAPSHOT.family("embedding", "bge-m3"), weights.read_facts(out))
    assert remark == ("sentence-transformers keeps 512 tokens (max_seq_length), the catalog says 8192: "
                      "longer chunks are cut")


def test_a_catalog_entry_known_to_be_wrong_is_corrected(tmp_path):
    # Xinference 4.1.0 lists jina-embeddings-v2-base-en at 512 dimensions; the model (a JinaBert of hidden
    # size 768) gives 768, as its card says. The genuine weights must not be refused.
    jina = {"architectures": ["JinaBertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
            "max_position_embeddings": 8192}
    assert weights.verdict(SNAPSHOT, "embedding", "jina-embeddings-v2-base-en", folder(tmp_path, jina, 768)) is None
    assert SNAPSHOT.family("embedding", "jina-embeddings-v2-base-en").dimensions == 768


def test_an_llm_folder_is_matched_on_its_shape_not_only_its_lineage(tmp_path):
    llama8b = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
    problem, hint = weights.verdict(SNAPSHOT, "LLM", "deepseek-r1-distill-qwen", folder(tmp_path, llama8b))
    assert "LlamaForCausalLM" in problem
    assert hint.startswith("these weights fit `deepseek-r1-distill-llama`")  # the same shape, the closest name
    assert "Yi-1.5" not in hint  # a Llama of another shape (4096 hidden, 32 layers, but 64000 words)


def test_the_installed_package_is_not_the_truth_for_a_server_that_did_not_answer(tmp_path):
    from provision.observe import catalog_for

    text = ("version: 1\nname: t\nserver:\n  endpoint: http://127.0.0.1:9\nmodels:\n"
            "  - role: embedding\n    uid: e\n    name: bge-m3\nroles: {chat: 0, embedding: 1, rerank: 0}\n")
    m = parse(text, file="m.yml", environ={})
    catalog = catalog_for(m, None)
    assert catalog.authoritative is False
    assert "http://127.0.0.1:9 did not answer" in catalog.source


# -- a server's catalog: one spec dict per hub and quantization (xinference 4.1's model_registrations) --------

def _flat(fmt, size, quant, hub, model_id, **extra):
    return {"model_format": fmt, "model_size_in_billions": size, "quantization": quant, "model_hub": hub,
            "model_id": model_id, "model_revision": None, **extra}


def test_a_servers_flattened_specs_are_joined_back_into_the_packages():
    from provision.catalog.model import family_from_xinference

    served = {"model_name": "Qwen3-Instruct", "model_ability": ["chat"], "context_length": 262144, "model_specs": [
        _flat("pytorch", 4, "none", "huggingface", "Qwen/Qwen3-4B-Instruct-2507"),
        _flat("pytorch", 4, "none", "modelscope", "Qwen/Qwen3-4B-Instruct-2507"),
        _flat("gptq", 4, "Int4", "huggingface", "JunHowie/Qwen3-4B-Instruct-2507-GPTQ-Int4"),
        _flat("gptq", 4, "Int8", "huggingface", "JunHowie/Qwen3-4B-Instruct-2507-GPTQ-Int8"),
        _flat("gptq", 4, "Int4", "modelscope", "JunHowie/Qwen3-4B-Instruct-2507-GPTQ-Int4"),
        _flat("ggufv2", 4, "Q4_K_M", "modelscope", "unsloth/Qwen3-4B-Instruct-2507-GGUF",
              model_file_name_template="Qwen3-4B-Instruct-2507-Q4_K_M.gguf"),
        _flat("ggufv2", 4, "Q8_0", "modelscope", "unsloth/Qwen3-4B-Instruct-2507-GGUF",
              model_file_name_template="Qwen3-4B-Instruct-2507-Q8_0.gguf"),
    ]}
    family = family_from_xinference(served, "LLM")
    catalog = Catalog([family], "the server at http://127.0.0.1:1 (xinference 4.1.0)", "4.1.0")
    assert [s.quantizations() for s in catalog.specs(family, size=4, format="gptq")] == [["Int4"], ["Int8"]]
    assert catalog.specs(family, size=4, format="gptq", quantization="Int8", hub="huggingface")
    int4 = catalog.choose(family, size=4, format="gptq", quantization="Int4", hub="modelscope")
    assert int4.source == "JunHowie/Qwen3-4B-Instruct-2507-GPTQ-Int4"
    [gguf] = catalog.specs(family, size=4, format="ggufv2")
    assert gguf.quantizations("modelscope") == ["Q4_K_M", "Q8_0"] and gguf.sources["modelscope"].file_template
    [plain] = catalog.specs(family, size=4, format="pytorch")
    assert set(plain.sources) == {"huggingface", "modelscope"} and plain.quantizations() == ["none"]
