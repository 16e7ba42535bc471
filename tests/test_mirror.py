"""provision.mirror against the REAL modelscope client (modelscope 1.40 + modelscope_hub 0.5).

Every test runs `snapshot_download(..., endpoint=mirror.url)` or raw HTTP against a MirrorServer on
127.0.0.1, port 0, over a small synthetic repo. Retry back-offs are patched to zero (modelscope.md §7.5).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from provision.mirror import Fault, MirrorServer

modelscope = pytest.importorskip("modelscope")
requests = pytest.importorskip("requests")
from modelscope_hub import errors as ms_errors  # noqa: E402

MODEL = "acme/tiny-model"
BIG = 3 * 1024 * 1024
MB = 1024 * 1024

# repo-relative path -> bytes
REPO_FILES: dict[str, bytes] = {
    "config.json": json.dumps({"model_type": "toy", "hidden_size": 8}).encode(),
    "README.md": b"# tiny\n",
    "empty.txt": b"",
    "sub/nested/a.txt": b"nested file\n",
    "sub/b.json": b'{"b": 1}\n',
    "docs/na\u00efve name+1.txt": "spaces, plus and non-ASCII\n".encode(),
    "model.bin": hashlib.shake_256(b"provision-mirror-test").digest(BIG),
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    repo = root / MODEL
    for rel, data in REPO_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    # never listed, never served
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("[core]\n")
    (repo / "model.bin.incomplete").write_bytes(b"partial")
    (tmp_path / "secret.txt").write_text("outside the mirror")
    (repo / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture(autouse=True)
def modelscope_env(modelscope_client_env):
    """The real client against the mirror, set up as in conftest."""


def _assert_port_closed(port: int) -> None:
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still accepts connections"


@pytest.fixture()
def mirror(mirror_root):
    server = MirrorServer(mirror_root).start()
    yield server
    server.stop()
    _assert_port_closed(server.port)


def download(server: MirrorServer, dest: Path, **kwargs) -> Path:
    from modelscope import snapshot_download

    return Path(snapshot_download(MODEL, local_dir=str(dest), endpoint=server.url, **kwargs))


def file_requests(server: MirrorServer) -> list[tuple[str, str | None, int]]:
    """(FilePath, Range, status) of every file download the mirror answered."""
    return [(r.file, r.range, r.status) for r in server.request_log if r.file is not None]


def listing_requests(server: MirrorServer):
    return [r for r in server.request_log if "/repo/files" in r.path]


def raw_get(server: MirrorServer, target: str, headers: dict | None = None):
    """GET a raw request target (no client-side normalisation of `..`). Returns (status, headers, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def file_url(path: str, model: str = MODEL) -> str:
    return f"/api/v1/models/{model}/repo?Revision=master&FilePath={quote_plus(path)}"


# --------------------------------------------------------------------------- happy paths


def test_full_download_matches_the_repo(mirror, tmp_path):
    out = download(mirror, tmp_path / "out")

    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == REPO_FILES  # hidden files, partials and the escaping symlink are not part of the repo
    assert sorted(f for f, _, _ in file_requests(mirror)) == sorted(REPO_FILES)
    assert all(status == 200 for _, _, status in file_requests(mirror))
    assert len(listing_requests(mirror)) == 1


def test_rerun_fetches_no_file_again(mirror, tmp_path):
    download(mirror, tmp_path / "out")
    before = len(file_requests(mirror))
    download(mirror, tmp_path / "out")

    assert before == len(REPO_FILES)
    assert len(file_requests(mirror)) == before, "a complete local copy must not be downloaded again"
    assert len(listing_requests(mirror)) == 2  # the listing is always fetched again


def test_allow_pattern_with_a_folder_uses_root(mirror, tmp_path):
    out = download(mirror, tmp_path / "out", allow_patterns=["sub/*"])

    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {"sub/nested/a.txt", "sub/b.json"}
    assert "Root=sub" in listing_requests(mirror)[0].path


def test_listing_shape_and_sha256_is_computed_once(mirror, monkeypatch):
    from provision.mirror import files as mirror_mod

    calls = []
    real = mirror_mod._sha256_of

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(mirror_mod, "_sha256_of", counting)
    target = f"/api/v1/models/{MODEL}/repo/files?Revision=master&Recursive=True"
    status, _, body = raw_get(mirror, target)
    status2, _, body2 = raw_get(mirror, target)

    assert status == status2 == 200
    doc = json.loads(body)
    assert doc["Code"] == 200 and doc["Success"] is True and doc["RequestId"]
    entries = {e["Path"]: e for e in doc["Data"]["Files"]}
    blobs = {p: e for p, e in entries.items() if e["Type"] == "blob"}
    trees = {p for p, e in entries.items() if e["Type"] == "tree"}
    assert set(blobs) == set(REPO_FILES)
    assert trees == {"sub", "sub/nested", "docs"}
    for path, data in REPO_FILES.items():
        assert blobs[path]["Size"] == len(data)
        assert blobs[path]["Sha256"] == sha(data)
        assert blobs[path]["Name"] == path.rsplit("/", 1)[-1]
        assert blobs[path]["Revision"] == "master"
    assert len(calls) == len(REPO_FILES), "the second listing must come from the sha256 cache"
    assert json.loads(body2)["Data"] == doc["Data"]


def test_ranges_and_headers(mirror):
    data = REPO_FILES["model.bin"]
    status, headers, body = raw_get(mirror, file_url("model.bin"), {"Range": "bytes=10-19"})
    assert (status, body) == (206, data[10:20])
    assert headers["Content-Range"] == f"bytes 10-19/{BIG}"
    assert headers["Content-Length"] == "10"
    assert headers["X-Linked-ETag"] == f'"{sha(data)}"'

    status, headers, body = raw_get(mirror, file_url("model.bin"), {"Range": "bytes=-5"})
    assert (status, body) == (206, data[-5:])

    status, headers, body = raw_get(mirror, file_url("model.bin"), {"Range": f"bytes={BIG}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{BIG}" and body == b""

    status, _, body = raw_get(mirror, file_url("docs/na\u00efve name+1.txt"))
    assert (status, body) == (200, REPO_FILES["docs/na\u00efve name+1.txt"])


def test_repo_info_revisions_and_acceleration_probe(mirror):
    status, _, body = raw_get(mirror, f"/api/v1/models/{MODEL}")
    assert status == 200 and json.loads(body)["Data"]["Name"] == "tiny-model"
    status, _, body = raw_get(mirror, f"/api/v1/models/{MODEL}/revisions")
    assert json.loads(body)["Data"]["RevisionMap"]["Branches"][0]["Revision"] == "master"
    status, _, body = raw_get(mirror, "/api/v1/models/acme/nope")
    assert status == 404 and json.loads(body)["Success"] is False
    status, _, _ = raw_get(mirror, "/api/v1/repos/internalAccelerationInfo")
    assert status == 404


def test_single_file_download_via_the_endpoint_variable(mirror, tmp_path, monkeypatch):
    # model_file_download(revision=None) asks /revisions with a HubApi() that ignores endpoint=,
    # so only MODELSCOPE_ENDPOINT keeps it off modelscope.cn (15 s of DNS retries in a sandbox).
    from modelscope.hub.file_download import model_file_download
    from modelscope_hub import config

    monkeypatch.setenv("MODELSCOPE_ENDPOINT", mirror.url)
    config.set_default_config(None)
    path = model_file_download(MODEL, "sub/b.json", local_dir=str(tmp_path / "one"))

    assert Path(path).read_bytes() == REPO_FILES["sub/b.json"]
    assert [r.path.split("?")[0] for r in mirror.request_log] == [
        f"/api/v1/models/{MODEL}/revisions",
        f"/api/v1/models/{MODEL}/repo",
    ]


# --------------------------------------------------------------------------- resume and faults


def test_resume_of_a_partial_file_sends_range(mirror, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin.incomplete").write_bytes(REPO_FILES["model.bin"][:MB])

    download(mirror, out)

    assert ("model.bin", f"bytes={MB}-", 206) in file_requests(mirror)
    assert [f for f, _, _ in file_requests(mirror)].count("model.bin") == 1
    assert sha((out / "model.bin").read_bytes()) == sha(REPO_FILES["model.bin"])
    assert not (out / "model.bin.incomplete").exists()


def test_dropped_connection_recovers_with_ranges(mirror, tmp_path):
    mirror.faults.add(Fault(where="download", file="model.bin", drop_after=MB, times=2))

    out = download(mirror, tmp_path / "out")

    ranges = [(r, s) for f, r, s in file_requests(mirror) if f == "model.bin"]
    assert ranges == [(None, 200), (f"bytes={MB}-", 206), (f"bytes={2 * MB}-", 206)]
    assert (out / "model.bin").read_bytes() == REPO_FILES["model.bin"]


def test_unknown_model_is_http_404(mirror, tmp_path):
    from modelscope import snapshot_download

    with pytest.raises(requests.HTTPError) as info:
        snapshot_download("acme/no-such-model", local_dir=str(tmp_path / "out"), endpoint=mirror.url)

    assert info.value.response.status_code == 404
    assert isinstance(info.value.__cause__, ms_errors.NotExistError)
    assert info.value.__cause__.status_code == 404
    assert not file_requests(mirror)


def test_token_is_required_when_set(mirror_root, tmp_path):
    with MirrorServer(mirror_root, token="s3cret") as server:
        with pytest.raises(requests.HTTPError) as info:
            download(server, tmp_path / "anon")
        assert info.value.response.status_code == 401
        assert isinstance(info.value.__cause__, ms_errors.AuthenticationError)

        out = download(server, tmp_path / "auth", token="s3cret")
        assert (out / "config.json").read_bytes() == REPO_FILES["config.json"]

        status, _, body = raw_get(server, file_url("config.json"), {"Cookie": "m_session_id=s3cret"})
        assert (status, body) == (200, REPO_FILES["config.json"])
        status, _, body = raw_get(server, file_url("config.json"), {"Authorization": "Bearer wrong"})
        assert status == 401 and json.loads(body)["Success"] is False
    _assert_port_closed(server.port)


def test_wrong_sha256_fails_that_file_only(mirror, tmp_path):
    mirror.faults.add(where="listing", file="config.json", bad_sha256=True)

    with pytest.raises(ms_errors.FileDownloadError) as info:
        download(mirror, tmp_path / "out")

    assert set(info.value.failed_files) == {"config.json"}
    assert isinstance(info.value.failed_files["config.json"], ms_errors.FileIntegrityError)
    out = tmp_path / "out"
    assert not (out / "config.json").exists(), "a file with a bad hash must never reach its target path"
    assert (out / "model.bin").read_bytes() == REPO_FILES["model.bin"]
    assert [f for f, _, _ in file_requests(mirror)].count("config.json") == 3  # the client's 3 hash attempts


def test_listing_500_fails_after_retries_then_recovers(mirror, tmp_path):
    fault = mirror.faults.add(where="listing", status=500)
    with pytest.raises(ms_errors.ServerError):
        download(mirror, tmp_path / "out")
    assert [r.status for r in listing_requests(mirror)] == [500] * 4  # REPO_TREE_PAGE_MAX_ATTEMPTS
    assert not file_requests(mirror)

    fault.times = fault.hits + 2  # two more failures, then the real answer
    out = download(mirror, tmp_path / "out")
    assert [r.status for r in listing_requests(mirror)][4:] == [500, 500, 200]
    assert (out / "config.json").exists()


def test_persistent_500_on_a_file_is_a_file_download_error(mirror, tmp_path):
    mirror.faults.add(where="download", file="README.md", status=500)

    started = time.monotonic()
    with pytest.raises(ms_errors.FileDownloadError) as info:
        download(mirror, tmp_path / "out")

    assert set(info.value.failed_files) == {"README.md"}
    assert isinstance(info.value.failed_files["README.md"], ms_errors.ServerError)
    assert time.monotonic() - started < 20, "the patched back-offs should keep this fast"


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    "target, statuses",
    [
        (file_url("../../secret.txt"), {400}),
        (file_url("sub/../../../secret.txt"), {400}),
        (file_url("/etc/passwd"), {400}),
        (file_url("..\\..\\secret.txt"), {400}),
        (file_url("escape.txt"), {404}),  # a symlink that leaves the mirror
        (file_url(".git/config"), {404}),
        (file_url("model.bin.incomplete"), {404}),
        (file_url("config.json", model="acme/.."), {400, 404}),
        ("/api/v1/models/%2E%2E/%2E%2E/repo?Revision=master&FilePath=secret.txt", {400, 404}),
        ("/api/v1/models/acme/tiny-model/../../../secret.txt", {404}),
        (f"/api/v1/models/{MODEL}/repo/files?Revision=master&Recursive=True&Root=..", {400}),
        (f"/api/v1/models/{MODEL}/repo?Revision=master", {400}),
    ],
)
def test_nothing_outside_the_mirror_is_served(mirror, target, statuses):
    status, _, body = raw_get(mirror, target)

    assert status in statuses
    assert b"outside the mirror" not in body
    doc = json.loads(body)
    assert doc["Success"] is False and doc["Code"] == status and doc["Message"] and doc["RequestId"]


def test_rate_limit_throttles_each_response(mirror_root):
    with MirrorServer(mirror_root, rate_limit_bytes_per_s=2 * MB) as server:
        started = time.monotonic()
        status, _, body = raw_get(server, file_url("model.bin"), {"Range": f"bytes=0-{MB - 1}"})
        elapsed = time.monotonic() - started
    assert status == 206 and len(body) == MB
    assert 0.4 < elapsed < 3, f"1 MiB at 2 MiB/s took {elapsed:.2f}s"


def test_stop_cuts_idle_keepalive_connections(mirror_root):
    server = MirrorServer(mirror_root).start()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("GET", file_url("README.md"))
    assert conn.getresponse().read() == REPO_FILES["README.md"]
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    _assert_port_closed(server.port)
    conn.close()


def test_serve_prints_the_url_and_stops_on_sigterm(mirror_root):
    code = "import sys; from provision.mirror import serve; serve(sys.argv[1], port=0)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(mirror_root)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"Serving ModelScope mirror of {mirror_root.resolve()} at http://127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", f"/api/v1/models/{MODEL}")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _assert_port_closed(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
