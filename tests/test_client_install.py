"""The client-only install (`pip install .`, no xinference): the catalog commands work from the snapshot
that ships in the package.

The venv is real: built once from the package registry under .test-cache (its dependencies change
rarely), and provision itself reinstalled from this checkout, not editable, on every run, so a snapshot
left out of the package data fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.install


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    deps = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    key = hashlib.sha256(f"{sys.version}{deps}".encode()).hexdigest()[:12]
    venv = REPO / ".test-cache" / f"client-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        made = _run([sys.executable, "-m", "venv", venv])
        assert made.returncode == 0, made.stderr
        first = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", REPO])
        assert first.returncode == 0, first.stderr[-3000:]
        (venv / "ready").write_text("")
    # this checkout, as a wheel would install it (package data included), over the cached dependencies
    build = tmp_path_factory.mktemp("wheel")
    again = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                  "--force-reinstall", REPO], cwd=build)
    assert again.returncode == 0, again.stderr[-3000:]
    return venv


def provision(venv: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROVISION_STATE_DIR", "VIRTUAL_ENV")}
    return _run([venv / "bin" / "provision", *args], cwd=cwd, env=env)


def test_the_client_venv_has_no_xinference(client_venv):
    probe = _run([client_venv / "bin" / "python", "-c", "import xinference"])
    assert probe.returncode != 0 and "No module named 'xinference'" in probe.stderr


def test_models_answers_from_the_shipped_snapshot(client_venv, tmp_path):
    result = provision(client_venv, tmp_path, "models", "bge", "--role", "rerank", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["catalog"].startswith("provision's snapshot of xinference ")
    assert "bge-reranker-v2-m3" in [m["name"] for m in doc["models"]]
    assert all(m["role"] == "rerank" for m in doc["models"])


def test_init_writes_a_manifest_that_validate_accepts(client_venv, tmp_path):
    written = provision(client_venv, tmp_path, "init", "-o", "stack.yml")
    assert written.returncode == 0, written.stderr
    assert "no GPU" in written.stdout  # no nvidia-ml-py here: the CPU stack
    checked = provision(client_venv, tmp_path, "validate", "stack.yml")
    assert checked.returncode == 0, checked.stderr
    assert "catalog: provision's snapshot of xinference" in checked.stdout
