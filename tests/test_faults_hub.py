"""The fault matrix, the hub: listings that lie, hubs that trickle or stay silent, URLs with passwords, a
full disk. Through the real `modelscope` client and the mirror on loopback (with its fault injection), and
the real `provision plan`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from download_support import EMBED, REPOS, TOKEN_ENV, candidate, error_of, fetched_files, raised, spec_for

from provision.download import download_all, download_model, hub
from provision.errors import HubError

SECRET = "S3cretHubPassw0rd"


@pytest.fixture(autouse=True)
def quiet_fast_client(modelscope_client_env):
    """The shared client setup (conftest)."""


def listing_with(*entries: dict) -> bytes:
    files = [{"Name": Path(rel).name, "Path": rel, "Type": "blob", "Size": len(data), "Sha256": ""}
             for rel, data in REPOS[EMBED].items()]
    return json.dumps({"Code": 200, "Success": True, "Data": {"Files": files + list(entries)}}).encode()


# -- defect 1: a listing path that leaves the model folder ------------------------------------------------

@pytest.mark.parametrize("bad", ["../../../escape.txt", "/tmp/provision-escape.txt", "sub/../../escape.txt", "..",
                                 "a/./../../escape.txt", "C:\\escape.txt", ""])
def test_a_listing_path_outside_the_folder_fails_the_model_before_any_fetch(mirror, models_dir, tmp_path, bad):
    mirror.faults.add(where="listing", body=listing_with({"Name": "x", "Path": bad, "Type": "blob", "Size": 5}))
    error = raised(EMBED, mirror.url, models_dir)
    assert repr(bad) in error.message and mirror.url in error.message and "outside" in error.message
    assert fetched_files(mirror) == []  # nothing was fetched, so nothing can land outside models_dir
    assert not Path("/tmp/provision-escape.txt").exists()
    assert not any(p.name == "escape.txt" for p in tmp_path.rglob("*"))


# -- defect 20: listings that are not what a hub sends ------------------------------------------------------

@pytest.mark.parametrize("entry, said", [
    ({"Path": "big.bin", "Size": 10**30}, "size"),
    ({"Path": "neg.bin", "Size": -5}, "size"),
    ({"Path": "nan.bin", "Size": "lots"}, "size"),
    ({"Path": "f.bin", "Size": True}, "size"),
    ({"Path": 5, "Size": 5}, "path"),
])
def test_a_listing_with_impossible_sizes_or_paths_is_a_hub_error(mirror, models_dir, entry, said):
    mirror.faults.add(where="listing", body=listing_with({"Type": "blob", **entry}))
    error = raised(EMBED, mirror.url, models_dir)
    assert said in error.message and mirror.url in error.message and fetched_files(mirror) == []


def test_a_deeply_nested_answer_is_a_hub_error(mirror, models_dir):
    mirror.faults.add(where="listing", body=b'{"Data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    error = raised(EMBED, mirror.url, models_dir)
    assert "did not answer like a ModelScope hub" in error.message


def test_plan_reports_a_lying_listing_as_unknown_size(mirror, plan_json):
    mirror.faults.add(where="listing", body=listing_with({"Path": "../x", "Type": "blob", "Size": 1}))
    doc = plan_json(mirror.url)
    first = doc["plan"]["steps"][0]["candidates"][0]
    assert first["bytes_to_fetch"] is None and "outside" in first["weights"]


# -- defect 18: one deadline per hub call -------------------------------------------------------------------

class Stalling:
    """A loopback server that accepts and then trickles one byte every `every` seconds (None: says nothing)."""

    def __init__(self, every: float | None):
        self.every = every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        conns = []
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conns.append(conn)
                if self.every is not None:
                    threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()
            except OSError:
                continue
        for conn in conns:
            conn.close()

    def trickle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not self.stop.wait(self.every):
                conn.sendall(b" ")
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("every", [0.2, None], ids=["trickling", "silent"])
def test_a_slow_hub_is_timed_out_as_such(models_dir, every):
    stalling = Stalling(every)
    try:
        with pytest.raises(hub.HubTimeout):
            hub.list_model_files(EMBED, endpoint=stalling.url, deadline_s=1.5)
        with pytest.raises(HubError) as info:  # download.timeout: 1.5
            download_model(candidate(EMBED, models_dir), spec_for(stalling.url, models_dir, timeout=1.5), environ={})
    finally:
        stalling.close()
    text = info.value.render()
    assert "timed out after 1.5 s" in text and stalling.url in text and "download.timeout" in text


# -- defect 6: no password of a URL in what is shown -----------------------------------------------------------

def test_a_password_in_the_hub_url_is_never_shown(mirror, models_dir, plan_json):
    with_password = mirror.url.replace("http://", f"http://user:{SECRET}@")
    doc, printed = plan_json(with_password, text=True)
    assert SECRET not in printed and "***@127.0.0.1" in printed
    mirror.faults.add(where="listing", status=500)
    text = error_of(EMBED, with_password, models_dir)
    assert SECRET not in text and "***@" in text


# -- a full disk (a tmpfs the test mounts) -----------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of `size` (the test's parametrised value, default 1700k), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    size = getattr(request, "param", "1700k")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_that_fills_up_mid_download_is_said_and_keeps_what_was_there(mirror, mirror_root, small_disk):
    kept = small_disk / "other-model" / "config.json"
    kept.parent.mkdir()
    kept.write_text('{"model_type": "bert"}')
    shutil.copytree(mirror_root / EMBED, mirror_root / f"{EMBED}-2")
    # Each download fits the free space alone, so both pass the check; together they do not. The weights
    # come late, so both checks are done before either writes them.
    mirror.faults.add(where="download", file="model.safetensors", delay_s=0.5)
    results = download_all([candidate(EMBED, small_disk), candidate(f"{EMBED}-2", small_disk)],
                           spec_for(mirror.url, small_disk), parallel=2, environ={})
    errors = [r for r in results.values() if isinstance(r, HubError)]
    assert errors and all("the disk filled up while downloading" in e.render() for e in errors), results
    assert "free space in download.models_dir" in errors[0].render()
    assert kept.read_text() == '{"model_type": "bert"}'  # what was there stays


@pytest.mark.parametrize("small_disk", ["512k"], indirect=True)
def test_a_download_that_does_not_fit_is_refused_before_it_starts(mirror, small_disk):
    text = error_of(EMBED, mirror.url, small_disk)
    assert "not enough disk space" in text and fetched_files(mirror) == []


@pytest.fixture
def plan_json(tmp_path, invoke):
    """plan_json(hub_url, text=False): `provision plan --json` of a one-model manifest on that hub."""
    def run(endpoint: str, text: bool = False):
        manifest = tmp_path / "stack.yml"
        manifest.write_text(
            "version: 1\nname: t\nserver:\n  port: 1\ndownload:\n"
            f"  endpoint: {endpoint}\n  models_dir: {tmp_path / 'models'}\n  token_env: {TOKEN_ENV}\n"
            f"models:\n  - role: embedding\n    uid: e\n    name: bge-m3\n    source: {EMBED}\n"
            "roles: {chat: 0, rerank: 0}\n")
        result = invoke(["--state-dir", tmp_path / "state", "plan", "--json", manifest])
        human = invoke(["--state-dir", tmp_path / "state", "plan", manifest])
        assert result.exit_code == 0 and human.exit_code == 0, result.output + human.output
        doc = json.loads(result.stdout)
        return (doc, result.stdout + result.stderr + human.stdout + human.stderr) if text else doc
    return run


# -- defect 25: a damaged weight file is fetched again when asked (`up --refetch UID`) -------------------

def test_refetch_checks_a_trusted_folder_against_the_hub(mirror, models_dir):
    from download_support import WEIGHTS, fetch

    fetch(EMBED, mirror.url, models_dir)
    weights = models_dir / EMBED / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\xff" * len(WEIGHTS))  # bit rot: same size, and the same mtime below
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fetch(EMBED, mirror.url, models_dir).skipped  # the record trusts the folder
    result = fetch(EMBED, mirror.url, models_dir, verify=True)
    assert not result.skipped and weights.read_bytes() == WEIGHTS
