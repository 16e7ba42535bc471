"""The fault matrix, the command line and the mirror: bad arguments in every output mode, a mirror that is
probed with hostile requests, the Python floor, the optional extras.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from provision.mirror import MirrorServer

REPO = Path(__file__).resolve().parents[1]


# -- defect 20: usage errors, under --json too ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["status", "--json", "--bogus"],
    ["up", "--json"],
    ["plan", "--json", "a.yml", "b.yml"],
    ["verify", "--json", "extra"],
])
def test_a_usage_error_under_json_is_one_json_document(tmp_path, args):
    done = subprocess.run([sys.executable, "-m", "provision", "--state-dir", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert doc["status"] == "error" and doc["errors"][0]["type"] == "UsageError" and doc["errors"][0]["message"]
    assert "Traceback" not in done.stderr


def test_mirror_serve_on_port_70000_is_a_usage_error(invoke, tmp_path):
    result = invoke(["mirror", "serve", tmp_path, "--port", "70000"])
    assert result.exit_code == 2 and "70000" in result.output + result.stderr and "Traceback" not in result.stderr


def test_schema_to_an_unwritable_path_is_an_error(invoke, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "s.json"
    result = invoke(["schema", "-o", missing])
    assert result.exit_code == 2 and f"cannot write {missing}" in result.stderr and "Traceback" not in result.stderr
    result = invoke(["schema", "-o", tmp_path])  # a folder: click says so
    assert result.exit_code == 2 and "is a directory" in result.stderr and "Traceback" not in result.stderr


# -- defect 22: the mirror under hostile requests ----------------------------------------------------------

@pytest.fixture
def repo_root(tmp_path) -> Path:
    root = tmp_path / "mirror"
    model = root / "acme" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    return root


def test_the_request_log_and_hash_cache_stay_bounded(repo_root):
    for i in range(30):
        (repo_root / "acme" / "m" / f"extra-{i}.bin").write_bytes(bytes([i]))
    with MirrorServer(repo_root, log_limit=20, hash_limit=10) as mirror:
        for _ in range(25):
            requests.get(f"{mirror.url}/api/v1/models/acme/m/repo/files", timeout=10).raise_for_status()
        assert len(mirror.request_log) == 20
        assert len(mirror.hashes) <= 10


def test_a_symlink_loop_does_not_stop_the_warm_up(repo_root):
    loop = repo_root / "acme" / "m" / "loop"
    loop.symlink_to(loop)
    (repo_root / "acme" / "m" / "sub").mkdir()
    (repo_root / "acme" / "m" / "sub" / "up").symlink_to(repo_root / "acme" / "m")
    with MirrorServer(repo_root) as mirror:
        mirror.warm()
        files = requests.get(f"{mirror.url}/api/v1/models/acme/m/repo/files", timeout=10).json()["Data"]["Files"]
    assert {f["Path"] for f in files if f["Type"] == "blob"} == {"config.json", "model.safetensors"}


@pytest.mark.parametrize("header", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000])
def test_a_huge_range_is_no_server_error(repo_root, header):
    with MirrorServer(repo_root) as mirror:
        answer = requests.get(f"{mirror.url}/api/v1/models/acme/m/repo", params={"FilePath": "config.json"},
                              headers={"Range": header}, timeout=10)
    assert answer.status_code in (200, 206, 416)


def test_keep_alive_answers_are_not_held_back_by_nagle(repo_root):
    with MirrorServer(repo_root) as mirror:
        conn = http.client.HTTPConnection(mirror.host, mirror.port, timeout=10)
        for _ in range(2):
            conn.request("GET", "/api/v1/models/acme/m/repo/files")
            assert conn.getresponse().read()
        with mirror._httpd.connections_lock:
            live = list(mirror._httpd.connections)
        assert live and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in live)
        conn.close()


def test_a_folded_request_header_is_not_echoed(repo_root):
    with MirrorServer(repo_root) as mirror, socket.create_connection((mirror.host, mirror.port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/models/acme/m HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc\r\n Injected: yes\r\n"
                     b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert "Injected" not in head and all(":" in line for line in head.splitlines()[1:])


# -- defect 23: the Python floor the package states is the one it runs on --------------------------------

def test_the_mirror_runs_on_the_oldest_python_the_package_allows(repo_root):
    floor = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
                 if line.startswith("requires-python"))
    oldest = f"python{floor.lstrip('>=')}"
    found = [shutil.which(oldest), *map(str, Path.home().glob(f".pyenv/versions/{floor.lstrip('>=')}*/bin/{oldest}"))]
    python = next((p for p in found if p and subprocess.run([p, "-c", "pass"], capture_output=True).returncode == 0), None)
    if python is None:
        pytest.skip(f"{oldest} is not installed")
    assert subprocess.run([python, "-m", "compileall", "-q", str(REPO / "provision")], capture_output=True).returncode == 0
    code = ("import sys, json, urllib.request; sys.path.insert(0, sys.argv[1]);"
            "from provision.mirror import MirrorServer;"
            "m = MirrorServer(sys.argv[2]).start(); m.warm();"
            "body = json.load(urllib.request.urlopen(m.url + '/api/v1/models/acme/m/repo/files'));"
            "m.stop(); print(sorted(f['Sha256'][:8] for f in body['Data']['Files']))")
    done = subprocess.run([python, "-c", code, str(REPO), str(repo_root)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'" in done.stdout  # hashes were computed


# -- defect 24: every import has an extra that provides it ------------------------------------------------

def test_the_huggingface_hub_has_an_extra_and_its_absence_says_which(tmp_path, monkeypatch):
    text = (REPO / "pyproject.toml").read_text()
    assert "huggingface_hub" in text.split("huggingface = [", 1)[1].split("]", 1)[0]
    from download_support import candidate, spec_for

    from provision.download import download_model
    from provision.errors import HubError

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(HubError) as info:
        download_model(candidate("acme/m", tmp_path), spec_for(None, tmp_path, hub="huggingface"), environ={})
    assert "pip install 'provision[huggingface]'" in info.value.render()
