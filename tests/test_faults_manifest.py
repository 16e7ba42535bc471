"""The fault matrix, manifests: what a hostile or careless user writes. Each bad manifest exits 2 through the
real `provision validate`, with the file, the field and what is allowed, never a traceback and never a
secret; input that would take the machine down (alias bombs, deep nesting, endless files) is refused
within bounds; and a property-based fuzz of the loader: any bytes and any YAML tree either validate or
are reported as manifest problems.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_manifest import BAD_SOURCE, BAD_UID, BASE, edit

from provision.errors import ManifestError
from provision.manifest import load

REPO = Path(__file__).resolve().parents[1]
SECRET = "ms-Sup3rS3cretT0kenValue-0042"

# (id, manifest text, environment, field path, fragment of the message)
BAD = [
    # an open API on a non-loopback host, whichever way `false` is spelled (defect 2)
    ("auth-quoted-false", edit("  host: 127.0.0.1", "  host: 0.0.0.0", "  auth: 'false'"), {}, "server.auth", "opens the API"),
    ("auth-zero", edit("  host: 127.0.0.1", "  host: 0.0.0.0", "  auth: 0"), {}, "server.auth", "opens the API"),
    ("auth-off", edit("  host: 127.0.0.1", "  host: 0.0.0.0", "  auth: 'off'"), {}, "server.auth", "opens the API"),
    ("auth-from-env", edit("  host: 127.0.0.1", "  host: 0.0.0.0", "  auth: ${AUTH}"), {"AUTH": "false"}, "server.auth",
     "opens the API"),
    # values the schema let through (defect 21)
    ("uid-trailing-newline", edit("    uid: chat", '    uid: "chat\\n"'), {}, "models[2].uid", BAD_UID),
    ("name-trailing-newline", edit("    name: Qwen3-Instruct", '    name: "Qwen3-Instruct\\n"'), {}, "models[2].name",
     "name must be a Xinference model name"),
    ("source-trailing-newline", edit("    source: Qwen/Qwen3-4B-Instruct-2507", '    source: "Qwen/Qwen3-4B\\n"'), {},
     "models[2].source", BAD_SOURCE),
    ("size-zero", edit("    size_in_billions: 4", "    size_in_billions: 0"), {}, "models[2].size_in_billions",
     "greater than 0"),
    ("size-nan", edit("    size_in_billions: 4", "    size_in_billions: .nan"), {}, "models[2].size_in_billions",
     "a finite number"),
    ("size-inf", edit("    size_in_billions: 4", "    size_in_billions: .inf"), {}, "models[2].size_in_billions",
     "a finite number"),
    ("size-1e400", edit("    size_in_billions: 4", "    size_in_billions: 1e400"), {}, "models[2].size_in_billions",
     "a finite number"),
    ("size-string-nan", edit("    size_in_billions: 4", "    size_in_billions: 'nan'"), {}, "models[2].size_in_billions",
     "a finite number"),
    ("port-true", edit("  port: 9997", "  port: true"), {}, "server.port", "valid integer"),
    ("replica-true", edit("    uid: chat", "    uid: chat", "    replica: true"), {}, "models[2].replica", "valid integer"),
    ("parallel-true", edit("  hub: modelscope", "  hub: modelscope", "  parallel: true"), {}, "download.parallel",
     "valid integer"),
    ("local-path-empty", edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    local_path: ''"), {}, "models[2].local_path",
     "empty"),
    ("host-garbage", edit("  host: 127.0.0.1", "  host: 'not a host!'"), {}, "server.host", "not a host name or address"),
    ("host-bad-ip", edit("  host: 127.0.0.1", "  host: 256.1.1.1"), {}, "server.host", "not a host name or address"),
    ("host-with-port", edit("  host: 127.0.0.1", "  host: '127.0.0.1:9997'"), {}, "server.host", "server.port"),
    ("docker-host-garbage", edit("  docker: false", "  docker: true", "  docker_host: 'a b'"), {}, "ragflow.docker_host",
     "not a host name or address"),
    ("local-path-root", edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    local_path: /"), {}, "models[2].local_path",
     "system folder"),
    ("local-path-etc", edit("    source: Qwen/Qwen3-4B-Instruct-2507", "    local_path: /etc"), {}, "models[2].local_path",
     "system folder"),
]


@pytest.mark.parametrize("text, environ, path, fragment", [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_values_are_refused_with_field_and_reason(validate_file, text, environ, path, fragment):
    code, out = validate_file(text, environ)
    assert code == 2, out
    assert "Traceback" not in out
    rows = [row for row in out.splitlines() if f": {path}: " in row]
    assert rows and any(fragment in row for row in rows), f"{fragment!r} not said of {path}:\n{out}"


def test_a_resolved_secret_is_never_echoed(validate_file):
    """`port: ${MODELSCOPE_API_TOKEN}` is wrong, and the message shows what was written, not the token (defect 6)."""
    text = edit("  port: 9997", "  port: ${MODELSCOPE_API_TOKEN}")
    code, out = validate_file(text, {"MODELSCOPE_API_TOKEN": SECRET})
    assert code == 2 and "server.port" in out
    assert SECRET not in out and "${MODELSCOPE_API_TOKEN}" in out
    code, out = validate_file(text, {"MODELSCOPE_API_TOKEN": SECRET}, "--json")
    assert code == 2 and SECRET not in out and "${MODELSCOPE_API_TOKEN}" in out


def test_a_long_bad_value_is_cut(validate_file):
    code, out = validate_file(edit("    uid: chat", "    uid: " + "x" * 5000), {})
    assert code == 2 and "models[2].uid" in out
    assert max(len(line) for line in out.splitlines()) < 600


def test_ragflow_in_docker_and_a_loopback_server_is_said(validate_file):
    code, out = validate_file(edit("  docker: false", "  docker: true"), {})
    assert code == 0, out
    assert "warning: ragflow.docker is true but server.host is 127.0.0.1" in out and "0.0.0.0" in out


# -- input that would take the machine down (defect 4) --------------------------------------------------

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))

BOMBS = [
    pytest.param(BILLION_LAUGHS + "version: 1\nname: x\nmodels: [*i]\n", "aliases", id="alias-bomb"),
    pytest.param("version: 1\nname: x\nmodels: &m [*m]\n", "alias", id="recursive-alias"),
    pytest.param("version: 1\nname: x\nmodels: " + "[" * 5000 + "\n", "nested", id="5000-brackets"),
    pytest.param("version: 1\nname: x\nmodels: " + "{a: " * 5000 + "\n", "nested", id="5000-braces"),
    pytest.param("name: " + "x" * (2 << 20) + "\n", "larger than", id="a-3-mib-file"),
]


def run_bounded(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real CLI with 1.5 GB of address space at most: a bomb fails the test, not the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))

    return subprocess.run([sys.executable, "-m", "provision", *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit, cwd=REPO)


@pytest.mark.parametrize("text, fragment", BOMBS)
def test_bombs_exit_2_with_a_message(tmp_path, text, fragment):
    path = tmp_path / "bomb.yml"
    path.write_text(text)
    done = run_bounded("validate", str(path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and fragment in done.stderr, done.stderr[-2000:]
    done = run_bounded("validate", "--json", str(path))
    assert done.returncode == 2 and json.loads(done.stdout)["status"] == "error"


def test_an_endless_file_is_read_in_bounds():
    done = run_bounded("validate", "/dev/zero")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "larger than" in done.stderr, done.stderr[-2000:]


# -- property-based fuzz of the loader ---------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_reports(path: Path) -> None:
    try:
        load(path, environ={})
    except ManifestError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        assert exc.render()


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_validate_or_are_manifest_problems(tmp_path, data):
    path = tmp_path / "fuzz.yml"
    path.write_bytes(data)
    loads_or_reports(path)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["chat", "embedding", "rerank", "vllm", "auto", "${X}", "$$"]))
keys = st.one_of(st.sampled_from(["version", "name", "models", "server", "download", "roles", "ragflow", "role", "uid",
                                  "engine", "source", "fallbacks", "host", "port", "auth", "options", "gpu_idx"]),
                 st.text(max_size=12))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


@FUZZ
@given(st.dictionaries(keys, trees, max_size=8))
def test_any_yaml_tree_validates_or_is_manifest_problems(tmp_path, tree):
    path = tmp_path / "fuzz.yml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    loads_or_reports(path)


@pytest.fixture
def validate_file(tmp_path, invoke, monkeypatch):
    """validate_file(text, environ, *options) -> (exit code, everything printed), through the real CLI."""
    def run(text: str, environ: dict, *options: str):
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        path = tmp_path / "stack.yml"
        path.write_text(text)
        result = invoke(["--state-dir", tmp_path / "state", "validate", *options, path])
        return result.exit_code, result.stdout + result.stderr
    return run


def paths_of(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths_of(value, prefix + (i,))


VALID = yaml.safe_load(BASE)
VALID_PATHS = [p for p in paths_of(VALID) if p]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), trees), min_size=1, max_size=3))
def test_a_valid_manifest_with_any_value_replaced_validates_or_is_manifest_problems(tmp_path, edits):
    import copy

    tree = copy.deepcopy(VALID)
    for path, value in edits:
        try:
            node = tree
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced what this path ran through
    path = tmp_path / "fuzz.yml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    loads_or_reports(path)
