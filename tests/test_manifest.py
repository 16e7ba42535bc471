"""The manifest: every way to get it wrong is reported with file, line, field path and a hint; the
shipped manifests are valid; candidates() normalises what Xinference needs; the schema stays current.

Each invalid case is BASE (a valid manifest, line numbers in its margin) with one line edited, run
through the real `provision validate` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from provision.errors import ManifestError
from provision.manifest import load, parse

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "manifests").glob("*.yml"))
SCHEMA_FILE = ROOT / "schema" / "manifest.schema.json"


def numbered(text: str) -> str:
    """Strip the ' 12| ' margin that lets the table below name lines by number."""
    return "".join(line.partition("|")[2][1:] + "\n" for line in text.strip("\n").splitlines())


BASE = numbered("""
 1| version: 1
 2| name: test-stack
 3| server:
 4|   host: 127.0.0.1
 5|   port: 9997
 6|   virtual_env: false
 7| download:
 8|   hub: modelscope
 9|   token_env: MODELSCOPE_API_TOKEN
10| models:
11|   - role: embedding
12|     uid: emb
13|     name: bge-m3
14|     source: Xorbits/bge-m3
15|     engine: sentence_transformers
16|   - role: rerank
17|     uid: rerank
18|     name: bge-reranker-v2-m3
19|     source: AI-ModelScope/bge-reranker-v2-m3
20|     engine: vllm
21|     gpu_memory_utilization: 0.2
22|     fallbacks:
23|       - engine: transformers
24|   - role: chat
25|     uid: chat
26|     name: Qwen3-Instruct
27|     source: Qwen/Qwen3-4B-Instruct-2507
28|     engine: vLLM
29|     size_in_billions: 4
30|     gpu_memory_utilization: 0.5
31|     options:
32|       max_model_len: 8192
33| ragflow:
34|   docker: false
""")


def edit(old: str, *new: str, base: str = BASE) -> str:
    """`base` with its one line `old` replaced by the lines `new` (none: the line is deleted)."""
    lines = base.splitlines()
    at = [i for i, line in enumerate(lines) if line == old]
    assert len(at) == 1, f"{old!r} is not exactly one line of the base manifest"
    return "\n".join(lines[: at[0]] + list(new) + lines[at[0] + 1 :]) + "\n"


@pytest.fixture
def validate(invoke):
    """`provision validate ARGS` -> (result, everything it printed)."""
    def run(*args: str):
        result = invoke(["validate", *args])
        return result, result.stdout + result.stderr
    return run


EXTRA_CHAT_MODEL = ("  - role: chat", "    uid: chat2", "    name: qwen2.5-instruct",
                 "    source: qwen/Qwen2.5-0.5B-Instruct", "    engine: transformers", "ragflow:")
CHAT_ENGINES = "allowed for chat: vLLM, SGLang, Transformers, llama.cpp, MLX, LMDEPLOY"
ROLES_ALLOWED = "allowed: 'chat', 'embedding' or 'rerank'"
UTILIZATION = "allowed: 0 < gpu_memory_utilization <= 1"
BAD_UID = "uid may hold only letters, digits, '.', '_' and '-'"
BAD_SOURCE = "source must be a hub model id 'owner/name'"
UNSET = "PROVISION_TEST_SURELY_UNSET"

# (manifest text or None for a missing file, field path, line or None, fragment of the message or hint)
INVALID = [
    # wrong types
    pytest.param(edit("  port: 9997", "  port: abc"), "server.port", 5, "allowed: 1 <= port <= 65535", id="port-not-int"),
    pytest.param(edit("    uid: chat", "    uid: chat", "    replica: two"), "models[2].replica", 26, "valid integer", id="replica-not-int"),
    pytest.param(edit("  virtual_env: false", "  virtual_env: maybe"), "server.virtual_env", 6, "valid boolean", id="virtual-env-not-bool"),
    pytest.param(edit("      max_model_len: 8192", "      - max_model_len"), "models[2].options", 31, "valid dictionary", id="options-a-list"),
    pytest.param("version: 1\nname: x\nmodels:\n  chat: {}\n", "models", 3, "valid list", id="models-a-mapping"),
    pytest.param(edit("  port: 9997", "  port: 9997", "  port: 9998"), "server.port", 6, "first on line 5", id="duplicate-key"),
    pytest.param(edit("    uid: chat", "    uid: 2024"), "models[2].uid", 25, "valid string (got 2024)", id="uid-a-number"),
    pytest.param(edit("  virtual_env: false", "  env: [A]"), "server.env", 6, "valid dictionary", id="env-a-list"),
    pytest.param(edit("ragflow:", "roles: none", "ragflow:"), "roles", 33, "valid dictionary", id="roles-a-string"),
    pytest.param(edit("    uid: chat", "    uid: chat", "    n_gpu: lots"), "models[2].n_gpu", 26, "'auto', or null for CPU (got 'lots')", id="n-gpu-lots"),
    pytest.param(edit("    uid: chat", "    uid: chat", "    gpu_idx: x"), "models[2].gpu_idx", 26, "such as 0 or [0, 1] (got 'x')", id="gpu-idx-x"),
    pytest.param(edit("    size_in_billions: 4", "    size_in_billions: -1"), "models[2].size_in_billions", 29, "must be greater than 0", id="size-negative"),
    pytest.param(edit("    size_in_billions: 4", "    size_in_billions: big"), "models[2].size_in_billions", 29, "a number such as 4 or 0.5", id="size-a-word"),
    pytest.param(edit("    size_in_billions: 4", "    size_in_billions: 1_8"), "models[2].size_in_billions", 29, "YAML reads 1_8 as the number 18 (write 1.8 or quote it: '1_8')", id="size-yaml-underscore-int"),
    # unknown keys, with the closest valid one
    pytest.param(edit("name: test-stack", "nmae: test-stack"), "nmae", 2, "did you mean `name`?", id="unknown-top-level"),
    pytest.param(edit("  port: 9997", "  prot: 9997"), "server.prot", 5, "did you mean `port`?", id="unknown-server"),
    pytest.param(edit("  hub: modelscope", "  hbu: modelscope"), "download.hbu", 8, "did you mean `hub`?", id="unknown-download"),
    pytest.param(edit("    engine: vLLM", "    engin: vLLM"), "models[2].engin", 28, "did you mean `engine`?", id="unknown-model"),
    pytest.param(edit("      - engine: transformers", "      - engnie: transformers"), "models[1].fallbacks[0].engnie", 23, "did you mean `engine`?", id="unknown-fallback"),
    pytest.param(edit("  docker: false", "  dokcer: false"), "ragflow.dokcer", 34, "did you mean `docker`?", id="unknown-ragflow"),
    pytest.param(edit("    fallbacks:", "    fallback:"), "models[1].fallback", 22, "did you mean `fallbacks`?", id="unknown-fallback-singular"),
    pytest.param(edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilisation: 0.5"), "models[2].gpu_memory_utilisation", 30, "did you mean `gpu_memory_utilization`?", id="unknown-british-spelling"),
    pytest.param(edit("      - engine: transformers", "      - engine: transformers", "        role: chat"), "models[1].fallbacks[0].role", 24, "allowed keys: accept_weights_mismatch, engine, format", id="unknown-role-in-fallback"),
    # missing fields
    pytest.param(edit("version: 1"), "version", 1, "required field is missing", id="missing-version"),
    pytest.param(edit("name: test-stack"), "name", 1, "required field is missing", id="missing-name"),
    pytest.param("version: 1\nname: x\n", "models", 1, "required field is missing", id="missing-models"),
    pytest.param("version: 1\nname: x\nmodels: []\n", "models", 3, "at least 1 item", id="models-empty"),
    pytest.param(edit("  - role: rerank", "  -"), "models[1].role", 17, "required field is missing (What the model is for", id="missing-role"),
    pytest.param(edit("    uid: chat"), "models[2].uid", 24, "required field is missing (Xinference model UID", id="missing-uid"),
    pytest.param(edit("    name: Qwen3-Instruct"), "models[2].name", 24, "required field is missing (Xinference built-in model name", id="missing-model-name"),
    pytest.param(edit("    engine: vLLM"), "models[2].engine", 24, "chat models need an engine", id="chat-without-engine"),
    # duplicate uids, fallbacks included
    pytest.param(edit("    uid: chat", "    uid: emb"), "models[2].uid", 25, "uid 'emb' is already used by models[0]", id="duplicate-uid"),
    pytest.param(edit("      - engine: transformers", "      - engine: transformers", "        uid: emb"), "models[1].fallbacks[0].uid", 24, "uid 'emb' is already used by models[0]", id="fallback-takes-earlier-uid"),
    pytest.param(edit("      - engine: transformers", "      - engine: transformers", "        uid: chat"), "models[2].uid", 26, "uid 'chat' is already used by models[1].fallbacks[0]", id="fallback-takes-later-uid"),
    # engines per role
    pytest.param(edit("    engine: sentence_transformers", "    engine: sglang"), "models[0].engine", 15, "allowed for embedding: sentence_transformers, flag, vllm, llama.cpp", id="embedding-sglang"),
    pytest.param(edit("      - engine: transformers", "      - engine: flag"), "models[1].fallbacks[0].engine", 23, "allowed for rerank: sentence_transformers, vllm, llama.cpp", id="rerank-fallback-flag"),
    pytest.param(edit("    engine: vLLM", "    engine: bogus"), "models[2].engine", 28, CHAT_ENGINES, id="chat-bogus"),
    pytest.param(edit("    engine: vLLM", "    engine: vlm"), "models[2].engine", 28, "did you mean `vLLM`?", id="chat-engine-typo"),
    # gpu_memory_utilization in (0, 1]
    pytest.param(edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilization: 0"), "models[2].gpu_memory_utilization", 30, UTILIZATION, id="utilization-0"),
    pytest.param(edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilization: 1.5"), "models[2].gpu_memory_utilization", 30, UTILIZATION, id="utilization-1.5"),
    pytest.param(edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilization: -0.1"), "models[2].gpu_memory_utilization", 30, UTILIZATION, id="utilization-negative"),
    pytest.param(edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilization: high"), "models[2].gpu_memory_utilization", 30, UTILIZATION, id="utilization-high"),
    # other bounds and enumerations
    pytest.param(edit("    uid: chat", "    uid: chat", "    replica: 0"), "models[2].replica", 26, "allowed: replica >= 1", id="replica-0"),
    pytest.param(edit("  hub: modelscope", "  hub: modelscope", "  parallel: 0"), "download.parallel", 9, "allowed: 1 <= parallel <= 16", id="parallel-0"),
    pytest.param(edit("    uid: chat", "    uid: chat", "    launch_timeout: 0"), "models[2].launch_timeout", 26, "allowed: launch_timeout > 0", id="launch-timeout-0"),
    pytest.param(edit("version: 1", "version: 2"), "version", 1, "invalid value 2 (allowed: 1)", id="version-2"),
    pytest.param(edit("  hub: modelscope", "  hub: github"), "download.hub", 8, "allowed: 'modelscope', 'huggingface' or 'none'", id="bad-hub"),
    pytest.param(edit("  - role: rerank", "  - role: reranker"), "models[1].role", 16, ROLES_ALLOWED, id="bad-role"),
    pytest.param(edit("ragflow:", "roles:", "  vision: 1", "ragflow:"), "roles.vision", 34, ROLES_ALLOWED, id="bad-role-in-roles"),
    pytest.param(edit("ragflow:", *EXTRA_CHAT_MODEL), "models", 10, "expected 1 chat model, found 2 (add or remove a model with role: chat, or set roles.chat: 2)", id="two-chat-models"),
    # uids Xinference accepts
    pytest.param(edit("    uid: chat", "    uid: " + "a" * 101), "models[2].uid", 25, "uid must be 1-100 characters long", id="uid-too-long"),
    pytest.param(edit("    uid: chat", "    uid: chat-rep0"), "models[2].uid", 25, "must not end in -rep<N>", id="uid-replica-suffix"),
    pytest.param(edit("    uid: chat", "    uid: a/b"), "models[2].uid", 25, BAD_UID, id="uid-with-slash"),
    pytest.param(edit("    uid: chat", "    uid: my chat"), "models[2].uid", 25, BAD_UID, id="uid-with-space"),
    # no path traversal in names used as folder names
    pytest.param(edit("    uid: chat", "    uid: ../chat"), "models[2].uid", 25, BAD_UID, id="uid-traversal"),
    pytest.param(edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    source: ../etc/passwd"), "models[2].source", 27, BAD_SOURCE, id="source-dotdot"),
    pytest.param(edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    source: BAAI/../../x"), "models[2].source", 27, BAD_SOURCE, id="source-nested-dotdot"),
    pytest.param(edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    source: /abs/path"), "models[2].source", 27, BAD_SOURCE, id="source-absolute"),
    pytest.param(edit("      - engine: transformers", "      - source: ../x/y"), "models[1].fallbacks[0].source", 23, BAD_SOURCE, id="fallback-source-traversal"),
    pytest.param(edit("    name: Qwen3-Instruct", "    name: ../../etc"), "models[2].name", 26, "name must be a Xinference model name", id="model-name-traversal"),
    pytest.param(edit("name: test-stack", "name: ../x"), "name", 2, "name may hold only letters, digits", id="stack-name-traversal"),
    # values from the environment, addresses
    pytest.param(edit("    uid: chat", "    uid: ${%s}" % UNSET), "models[2].uid", 25, f"environment variable {UNSET} is not set (export {UNSET}=...", id="env-var-unset"),
    pytest.param(edit("  token_env: MODELSCOPE_API_TOKEN", "  token_env: ms-4f9a2c1e-77b0"), "download.token_env", 9, "the NAME of an environment variable, not the token itself", id="token-in-token-env"),
    pytest.param(edit("  virtual_env: false", "  endpoint: localhost:9997"), "server.endpoint", 6, "must be an http:// or https:// URL", id="endpoint-not-url"),
    # not YAML, not a manifest, no file
    pytest.param(edit("    uid: chat", "    uid: [chat"), "", 26, "YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence that starts on line 25)", id="yaml-unclosed-bracket"),
    pytest.param(edit("    uid: chat", '    uid: "chat'), "", 35, "YAML syntax error: found unexpected end of stream (while scanning a quoted scalar that starts on line 25)", id="yaml-unclosed-quote"),
    pytest.param(edit("    uid: chat", "\tuid: chat"), "", 25, "YAML syntax error: found character '\\t'", id="yaml-tab"),
    pytest.param(edit("    uid: chat", "   uid: chat"), "", 25, "YAML syntax error", id="yaml-bad-indent"),
    pytest.param("", "", None, "the file is empty (start from manifests/cpu-small.yml)", id="empty-file"),
    pytest.param("# only a comment\n", "", None, "the file is empty", id="comment-only"),
    pytest.param("- version: 1\n- name: x\n", "", 1, "must be a mapping of keys (version, name, models, ...), not a list", id="a-list"),
    pytest.param("hello\n", "", 1, "not a string", id="a-scalar"),
    pytest.param(None, "", None, "file not found (check the path)", id="missing-file"),
]


@pytest.mark.parametrize("text, path, line, fragment", INVALID)
def test_invalid_manifest_is_reported_with_file_line_path_and_hint(validate, tmp_path, monkeypatch, text, path, line, fragment):
    monkeypatch.delenv(UNSET, raising=False)
    file = tmp_path / "manifest.yml"
    if text is not None:
        file.write_text(text, encoding="utf-8")
    result, out = validate(str(file))
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    where = f"{file}:{line}" if line else str(file)
    prefix = f"{where}: {path}: " if path else f"{where}: "
    problems = [row.strip() for row in out.splitlines() if row.strip().startswith(prefix)]
    assert problems, f"no problem reported at {prefix!r}:\n{out}"
    assert any(fragment in row for row in problems), f"{fragment!r} missing at {prefix!r}:\n{out}"


def test_invalid_table_is_large_enough():
    assert len(INVALID) >= 35


def test_base_manifest_is_valid(validate, tmp_path):
    file = tmp_path / "base.yml"
    file.write_text(BASE)
    result, out = validate(str(file))
    assert result.exit_code == 0, out


def test_every_problem_is_reported_at_once_sorted_by_line(validate, tmp_path):
    text = edit("  docker: false", "  dokcer: false")  # line 34, from the structure check
    text = edit("    uid: chat", "    uid: emb", base=text)  # line 25, from the semantic check
    text = edit("  port: 9997", "  port: abc", base=text)  # line 5
    file = tmp_path / "three.yml"
    file.write_text(text)
    result, out = validate(str(file))
    assert result.exit_code == 2
    assert f"{file}: 3 problems in the manifest" in out
    rows = [row.strip() for row in out.splitlines() if row.strip().startswith(f"{file}:") and "problems in" not in row]
    assert [row.split(":")[1] for row in rows] == ["5", "25", "34"], out
    assert [row.split(": ")[1] for row in rows] == ["server.port", "models[2].uid", "ragflow.dokcer"]


def test_every_file_is_checked_even_after_a_bad_one(validate, tmp_path):
    bad, good = tmp_path / "bad.yml", tmp_path / "good.yml"
    bad.write_text(edit("version: 1", "version: 2"))
    good.write_text(BASE)
    result, out = validate(str(bad), str(good))
    assert result.exit_code == 2
    assert f"{bad}:1: version:" in out and f"{good}: ok" in out


def test_validate_json_reports_problems_with_path_line_and_hint(invoke, tmp_path):
    file = tmp_path / "m.yml"
    file.write_text(edit("      - engine: transformers", "      - engine: flag"))
    result = invoke(["validate", "--json", file])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)  # one document, nothing else on stdout
    assert doc["status"] == "error" and doc["exit_code"] == 2
    [error] = doc["errors"]
    assert error["type"] == "ManifestError" and error["file"] == str(file)
    [problem] = error["problems"]
    assert problem["path"] == "models[1].fallbacks[0].engine"
    assert problem["line"] == 23
    assert problem["hint"] == "allowed for rerank: sentence_transformers, vllm, llama.cpp"
    assert doc["manifests"] == [{"file": str(file), "valid": False, "problems": error["problems"], "catalog": ""}]


def test_validate_json_success(invoke, tmp_path):
    file = tmp_path / "m.yml"
    file.write_text(BASE)
    result = invoke(["validate", "--json", file])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["status"] == "success" and doc["errors"] == []
    assert doc["manifests"][0]["valid"] is True


def test_parse_raises_one_error_carrying_every_problem():
    with pytest.raises(ManifestError) as info:
        parse(edit("  port: 9997", "  port: abc"), file="x.yml", environ={})
    assert info.value.exit_code == 2
    assert [(p.path, p.line) for p in info.value.problems] == [("server.port", 5)]


# --------------------------------------------------------------------------------------------------
# Shipped manifests and the schema


def test_shipped_manifests_exist():
    assert len(SHIPPED) >= 3


def test_shipped_manifests_validate(validate):
    result, out = validate(*map(str, SHIPPED))
    assert result.exit_code == 0, out
    assert out.count(": ok (") == len(SHIPPED)


def test_schema_command_matches_the_committed_schema(invoke):
    result = invoke(["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(SCHEMA_FILE.read_text()), (
        "schema/manifest.schema.json is stale: run `provision schema -o schema/manifest.schema.json`"
    )


def test_schema_output_option_writes_the_same_text(invoke, tmp_path):
    out = tmp_path / "schema.json"
    assert invoke(["schema", "-o", out]).exit_code == 0
    assert out.read_text() == invoke(["schema"]).stdout


@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.name)
def test_shipped_manifest_validates_against_the_schema(manifest):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(manifest.read_text())))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.name)
def test_shipped_manifest_points_editors_at_the_schema(manifest):
    first = manifest.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schema/manifest.schema.json"


def test_schema_rejects_what_validate_rejects():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not list(validator.iter_errors(yaml.safe_load(BASE)))
    for bad in (edit("    engine: vLLM", "    engin: vLLM"), edit("version: 1", "version: 2"),
                edit("    gpu_memory_utilization: 0.5", "    gpu_memory_utilization: 1.5")):
        assert list(validator.iter_errors(yaml.safe_load(bad)))


def test_every_schema_property_has_a_description():
    schema = json.loads(SCHEMA_FILE.read_text())
    objects = {"Manifest": schema, **schema["$defs"]}
    missing = [f"{name}.{prop}" for name, obj in objects.items()
               for prop, spec in obj.get("properties", {}).items() if not spec.get("description")]
    assert not missing
    assert sum(len(obj.get("properties", {})) for obj in objects.values()) > 30


# --------------------------------------------------------------------------------------------------
# Normalisation: what candidates() hands to Xinference


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "stack" / "manifest.yml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(text)
    return file


@pytest.mark.parametrize(
    "old, given, index, expected",
    [
        ("    engine: vLLM", "vllm", 2, "vLLM"),
        ("    engine: vLLM", "VLLM", 2, "vLLM"),
        ("    engine: vLLM", "transformers", 2, "Transformers"),
        ("    engine: vLLM", "sglang", 2, "SGLang"),
        ("    engine: vLLM", "llamacpp", 2, "llama.cpp"),
        ("    engine: vLLM", "lmdeploy", 2, "LMDEPLOY"),
        ("    engine: sentence_transformers", "transformers", 0, "sentence_transformers"),
        ("    engine: sentence_transformers", "FLAG", 0, "flag"),
        ("    engine: sentence_transformers", "vLLM", 0, "vllm"),
        ("    engine: vllm", "Transformers", 1, "sentence_transformers"),
        ("    engine: vllm", "sentence-transformers", 1, "sentence_transformers"),
        ("    engine: vllm", "LLAMA.CPP", 1, "llama.cpp"),
    ],
)
def test_engine_names_are_normalised_per_role(tmp_path, old, given, index, expected):
    manifest = load(write(tmp_path, edit(old, f"    engine: {given}")), environ={})
    assert manifest.candidates(index)[0].engine == expected


def test_embedding_without_engine_uses_sentence_transformers(tmp_path):
    manifest = load(write(tmp_path, edit("    engine: sentence_transformers")), environ={})
    assert manifest.candidates(0)[0].engine == "sentence_transformers"


@pytest.mark.parametrize("given, wire", [("0.5", "0_5"), ("1.5", "1_5"), ("4", 4), ("4.0", 4), ("'0_5'", "0_5"), ("'1_8'", "1_8")])
def test_size_in_billions_is_sent_as_xinference_spells_it(tmp_path, given, wire):
    manifest = load(write(tmp_path, edit("    size_in_billions: 4", f"    size_in_billions: {given}")), environ={})
    assert manifest.candidates(2)[0].size_in_billions == wire


CHAIN = numbered("""
 1| version: 1
 2| name: chain
 3| download:
 4|   models_dir: weights
 5| models:
 6|   - role: embedding
 7|     uid: emb
 8|     name: bge-m3
 9|     source: Xorbits/bge-m3
10|   - role: rerank
11|     uid: rr
12|     name: bge-reranker-v2-m3
13|     source: AI-ModelScope/bge-reranker-v2-m3
14|     engine: transformers
15|     fallbacks:
16|       - engine: VLLM
17|   - role: chat
18|     uid: chat
19|     name: qwen2.5-instruct
20|     source: qwen/Qwen2.5-0.5B-Instruct
21|     local_path: local/qwen
22|     engine: vllm
23|     size_in_billions: 0.5
24|     gpu_memory_utilization: 0.5
25|     options:
26|       max_model_len: 4096
27|     fallbacks:
28|       - engine: transformers
29|       - name: Qwen3-Instruct
30|         source: Qwen/Qwen3-4B-Instruct-2507
31|         size_in_billions: 4
32|         n_gpu: 1
""")


@pytest.fixture
def chain(tmp_path, monkeypatch):
    file = write(tmp_path, CHAIN)
    monkeypatch.chdir(tmp_path)  # paths must not depend on where provision runs
    return load(file, environ={})


def test_fallbacks_inherit_from_the_entry_above(chain):
    primary, same_model_on_cpu, other_model = chain.candidates(2)
    assert (primary.engine, primary.n_gpu, primary.size_in_billions) == ("vLLM", "auto", "0_5")
    assert same_model_on_cpu.engine == "Transformers"
    assert same_model_on_cpu.n_gpu is None  # transformers without n_gpu runs on CPU
    for inherited in ("uid", "name", "source", "size_in_billions", "gpu_memory_utilization", "options", "folder"):
        assert getattr(same_model_on_cpu, inherited) == getattr(primary, inherited), inherited
    assert (other_model.name, other_model.size_in_billions, other_model.n_gpu) == ("Qwen3-Instruct", 4, 1)
    assert other_model.engine == "Transformers" and other_model.uid == "chat"
    assert [c.field_path for c in chain.candidates(2)] == ["models[2]", "models[2].fallbacks[0]", "models[2].fallbacks[1]"]
    assert [c.label for c in chain.candidates(2)] == ["primary", "fallback 1", "fallback 2"]


def test_a_fallback_with_a_new_source_does_not_inherit_local_path(chain, tmp_path):
    primary, same_model_on_cpu, other_model = chain.candidates(2)
    local = tmp_path / "stack" / "local" / "qwen"
    assert primary.folder == local and not primary.downloadable
    assert same_model_on_cpu.folder == local and not same_model_on_cpu.downloadable
    assert other_model.folder == tmp_path / "stack" / "weights" / "Qwen" / "Qwen3-4B-Instruct-2507"
    assert other_model.downloadable


def test_n_gpu_defaults_to_auto_for_gpu_engines_and_cpu_otherwise(chain):
    embedding, = chain.candidates(0)
    rerank_primary, rerank_vllm = chain.candidates(1)
    assert (embedding.engine, embedding.n_gpu) == ("sentence_transformers", None)
    assert (rerank_primary.engine, rerank_primary.n_gpu) == ("sentence_transformers", None)
    assert (rerank_vllm.engine, rerank_vllm.n_gpu) == ("vllm", "auto")


def test_relative_paths_resolve_against_the_manifest_folder(chain, tmp_path):
    folder = tmp_path / "stack"
    assert chain.base_dir == folder
    assert chain.models_dir == folder / "weights"
    assert chain.server_home == folder / ".provision" / "xinference"
    assert chain.candidates(0)[0].folder == folder / "weights" / "Xorbits" / "bge-m3"
    assert chain.candidates(0)[0].replica == 1 and chain.candidates(0)[0].launch_timeout == 900.0


def test_shipped_low_vram_chain_normalises():
    manifest = load(ROOT / "manifests" / "low-vram.yml", environ={})
    rerank = manifest.candidates(1)
    assert [c.engine for c in rerank] == ["vllm", "sentence_transformers", "sentence_transformers"]
    assert [c.name for c in rerank] == ["bge-reranker-v2-m3", "bge-reranker-v2-m3", "bge-reranker-base"]
    assert rerank[0].gpu_memory_utilization == 0.2 and rerank[0].n_gpu == "auto"
    assert manifest.candidates(2)[0].engine == "Transformers"


# --------------------------------------------------------------------------------------------------
# Values from the environment, and role counts


def test_env_var_interpolation(tmp_path):
    text = edit("    uid: chat", "    uid: ${CHAT_UID}")
    text = edit("  port: 9997", "  port: ${PORT:-9998}", base=text)
    text = edit("  host: 127.0.0.1", "  host: ${HOST:-0.0.0.0}", base=text)
    text = edit("      max_model_len: 8192", "      prompt: cost $$5 for ${ITEM}", base=text)
    manifest = load(write(tmp_path, text), environ={"CHAT_UID": "from-env", "HOST": "10.0.0.7", "ITEM": "tea"})
    assert manifest.models[2].uid == "from-env"
    assert manifest.server.port == 9998  # the default, then read as a number
    assert manifest.server.host == "10.0.0.7"  # the variable wins over the default
    assert manifest.models[2].options == {"prompt": "cost $5 for tea"}


def test_env_var_empty_default_and_missing(tmp_path):
    assert parse(edit("    uid: chat", "    uid: chat${SUFFIX:-}"), environ={}).models[2].uid == "chat"
    with pytest.raises(ManifestError) as info:
        parse(edit("    name: Qwen3-Instruct", "    name: ${MODEL_NAME}"), file="m.yml", environ={})
    [problem] = info.value.problems
    assert (problem.path, problem.line) == ("models[2].name", 26)
    assert "MODEL_NAME is not set" in problem.message and "${MODEL_NAME:-default}" in problem.hint


def test_roles_mapping_allows_a_stack_without_rerank(tmp_path):
    text = "\n".join(BASE.splitlines()[:15] + BASE.splitlines()[23:]) + "\n"  # drop models[1] (rerank)
    file = write(tmp_path, text + "roles:\n  rerank: 0\n")
    manifest = load(file, environ={})
    assert [m.role for m in manifest.models] == ["embedding", "chat"]
    with pytest.raises(ManifestError, match="expected 1 rerank model, found 0"):
        parse(text, environ={})


def test_roles_mapping_allows_two_chat_models():
    manifest = parse(edit("ragflow:", *EXTRA_CHAT_MODEL).replace("ragflow:", "roles:\n  chat: 2\nragflow:"), environ={})
    assert [m.uid for m in manifest.models] == ["emb", "rerank", "chat", "chat2"]
