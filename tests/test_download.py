"""provision.download through the REAL modelscope client against a MirrorServer on 127.0.0.1.

Fault tests use the mirror's fault injection (or `responses` for hub answers the mirror cannot give);
the client's retry back-offs and ours are patched to zero (reference/modelscope.md §7.5).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import threading

import pytest
import responses
from download_support import (
    CHAT, EMBED, README_ONLY, REPOS, TOKEN_ENV, WEIGHTS, candidate, error_of, fetch, fetched_files, raised, settled_log,
    spec_for,
)

from provision import download
from provision.download import fetch as fetch_module, folder as folder_module, hub, progress as progress_module
from provision.download import DownloadResult, download_all, download_model, local_folder_check
from provision.errors import HubError
from provision.mirror import Fault

pytest.importorskip("modelscope")


@pytest.fixture(autouse=True)
def quiet_fast_client(modelscope_client_env):
    """The shared client setup (conftest)."""


# --------------------------------------------------------------------------------------------------
# Happy path, skip, re-hash, re-fetch


def test_first_download_fetches_every_file_and_reports_progress(mirror, models_dir):
    events = []
    result = fetch(EMBED, mirror.url, models_dir, progress=events.append)

    folder = models_dir / EMBED
    assert result.folder == folder and not result.skipped
    assert result.files_fetched == len(REPOS[EMBED])
    assert result.bytes_fetched == sum(len(b) for b in REPOS[EMBED].values())
    assert {rel: (folder / rel).read_bytes() for rel in REPOS[EMBED]} == REPOS[EMBED]
    assert (folder / folder_module.RECORD).is_file()
    states = [e.state for e in events]
    assert states[0] == "listing" and states[-1] == "done"
    assert events[-1].bytes_done == events[-1].bytes_total == result.bytes_fetched


def test_unchanged_folder_is_skipped_without_the_client(mirror, models_dir, monkeypatch):
    fetch(EMBED, mirror.url, models_dir)
    settled_log(mirror)
    mirror.request_log.clear()
    monkeypatch.setattr(fetch_module, "_modelscope_client", lambda: pytest.fail("the client must not run"))

    result = fetch(EMBED, mirror.url, models_dir)

    assert result.skipped and result.files_fetched == 0 and result.bytes_fetched == 0
    assert [r.file for r in settled_log(mirror)] == [None]  # our one listing, no file body


def test_touched_file_is_rehashed_not_fetched(mirror, models_dir):
    fetch(EMBED, mirror.url, models_dir)
    settled_log(mirror)
    mirror.request_log.clear()
    weights = models_dir / EMBED / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    result = fetch(EMBED, mirror.url, models_dir)

    assert not result.skipped and result.files_fetched == 0
    assert fetched_files(mirror) == []
    assert len(settled_log(mirror)) == 2  # our listing and the client's
    assert fetch(EMBED, mirror.url, models_dir).skipped  # the record now holds the new mtime


def test_truncated_file_is_fetched_again(mirror, models_dir):
    fetch(EMBED, mirror.url, models_dir)
    settled_log(mirror)
    mirror.request_log.clear()
    weights = models_dir / EMBED / "model.safetensors"
    weights.write_bytes(WEIGHTS[:1000])

    result = fetch(EMBED, mirror.url, models_dir)

    assert (result.files_fetched, result.bytes_fetched) == (1, len(WEIGHTS))
    assert fetched_files(mirror) == ["model.safetensors"]
    assert weights.read_bytes() == WEIGHTS


def test_partial_download_resumes_with_range(mirror, models_dir):
    folder = models_dir / EMBED
    folder.mkdir(parents=True)
    (folder / "model.safetensors.incomplete").write_bytes(WEIGHTS[:300_000])

    fetch(EMBED, mirror.url, models_dir)

    ranges = [r.range for r in settled_log(mirror) if r.file == "model.safetensors"]
    assert ranges == ["bytes=300000-"]
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_dropped_connection_recovers(mirror, models_dir):
    mirror.faults.add(where="download", file="model.safetensors", drop_after=200_000, times=1)
    assert fetch(EMBED, mirror.url, models_dir).files_fetched == len(REPOS[EMBED])
    assert (models_dir / EMBED / "model.safetensors").read_bytes() == WEIGHTS


def test_endpoint_from_environment_and_token(start_mirror, models_dir):
    mirror = start_mirror(token="s3cret")
    environ = {"MODELSCOPE_ENDPOINT": mirror.url, TOKEN_ENV: "s3cret"}
    result = download_model(candidate(CHAT, models_dir), spec_for(None, models_dir), environ=environ)
    assert result.files_fetched == 2


def test_progress_grows_while_downloading_and_its_thread_stops(start_mirror, models_dir, monkeypatch):
    mirror = start_mirror(rate_limit_bytes_per_s=2 * 1024 * 1024)
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL_S", 0.05)
    events = []
    fetch(EMBED, mirror.url, models_dir, progress=events.append)

    partial = [e for e in events if e.state == "downloading" and 0 < e.bytes_done < e.bytes_total]
    assert partial, [(e.state, e.bytes_done) for e in events]
    assert [e.bytes_done for e in partial] == sorted(e.bytes_done for e in partial)
    assert not [t for t in threading.enumerate() if t.name.startswith("download-progress")]


def test_download_all_collects_errors_per_model(mirror, models_dir):
    spec = spec_for(mirror.url, models_dir)
    wanted = [candidate(EMBED, models_dir), candidate("acme/missing", models_dir), candidate(CHAT, models_dir)]

    results = download_all(wanted, spec, parallel=3, environ={})

    assert isinstance(results["tiny-embed"], DownloadResult) and isinstance(results["tiny-chat"], DownloadResult)
    assert isinstance(results["missing"], HubError) and "acme/missing" in results["missing"].message


# --------------------------------------------------------------------------------------------------
# Errors: each names the model and says what to do


def test_not_found(mirror, models_dir):
    error = raised("acme/no-such-model", mirror.url, models_dir)
    assert error.__cause__.response.status_code == 404  # raised `from` the library's exception
    text = error.render()
    assert "acme/no-such-model" in text and "no-such-model (embedding)" in text and "check `source`" in text


def test_unauthorized_names_the_token_variable(start_mirror, models_dir):
    mirror = start_mirror(token="s3cret")
    text = error_of(EMBED, mirror.url, models_dir)
    assert "401" in text and f"set the token in the environment variable {TOKEN_ENV}" in text
    text = error_of(EMBED, mirror.url, models_dir, {TOKEN_ENV: "wrong"})
    assert f"the token in {TOKEN_ENV} was refused" in text


def test_server_error_points_at_the_endpoint(mirror, models_dir):
    mirror.faults.add(where="listing", status=500)
    text = error_of(EMBED, mirror.url, models_dir)
    assert "HTTP 500" in text and "unreachable" in text and "download.endpoint" in text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


def test_connection_refused_is_unreachable(models_dir):
    text = error_of(EMBED, f"http://127.0.0.1:{closed_port()}", models_dir)
    assert "unreachable" in text and "Connection refused" in text
    assert "download.endpoint" in text and "hub: none" in text


def test_huggingface_unreachable(models_dir, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    spec = spec_for(f"http://127.0.0.1:{closed_port()}", models_dir, hub="huggingface")
    with pytest.raises(HubError, match="unreachable"):
        download_model(candidate(EMBED, models_dir), spec, environ={})


def test_wrong_sha256_is_a_hash_mismatch(mirror, models_dir):
    mirror.faults.add(where="listing", bad_sha256=True, file="config.json")
    text = error_of(EMBED, mirror.url, models_dir)
    assert "does not match the hub's listing" in text and "config.json" in text and "re-sync the mirror" in text
    assert not (models_dir / EMBED / "config.json").exists()  # the client never leaves a bad file


@responses.activate
def test_success_false_means_no_files(models_dir):
    responses.get(re.compile(r"http://hub\.test/api/v1/models/.*"), json={"Code": 10, "Success": False, "Data": None})
    text = error_of(EMBED, "http://hub.test", models_dir)
    assert "the hub returned no files for acme/tiny-embed" in text


def test_repo_without_weights(mirror, models_dir):
    text = error_of(README_ONLY, mirror.url, models_dir)
    assert "holds no weights" in text and "check `source`" in text


@pytest.mark.parametrize(
    ("source", "fault", "token", "expected"),
    [
        ("acme/gone", None, None, "check `source`"),
        (EMBED, None, "s3cret", f"environment variable {TOKEN_ENV}"),
        (EMBED, Fault(where="listing", status=503), None, "HTTP 503"),
    ],
)
def test_errors_raised_by_the_client_are_mapped(start_mirror, models_dir, monkeypatch, source, fault, token, expected):
    """Our listing passed, then the hub changed its answer: the client's own exceptions are mapped too."""
    mirror = start_mirror(token=token)
    if fault:
        mirror.faults.add(fault)
    listing = [hub.RepoFile(rel, len(data), "") for rel, data in REPOS[EMBED].items()]
    monkeypatch.setattr(hub, "list_model_files", lambda *a, **k: listing)
    assert expected in error_of(source, mirror.url, models_dir)


@responses.activate
def test_client_success_false_means_no_files(models_dir, monkeypatch):
    responses.get(re.compile(r"http://hub\.test/.*"), json={"Success": False, "Data": None})
    monkeypatch.setattr(hub, "list_model_files", lambda *a, **k: [hub.RepoFile("config.json", 2, "")])
    assert "no files" in error_of(EMBED, "http://hub.test", models_dir)


def test_not_enough_disk_space_is_found_before_downloading(mirror, models_dir, monkeypatch):
    monkeypatch.setattr(folder_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    text = error_of(EMBED, mirror.url, models_dir)
    assert "not enough disk space" in text and "1.0 MiB" in text and "download.models_dir" in text
    assert fetched_files(mirror) == []


def test_disk_full_while_downloading(mirror, models_dir, monkeypatch):
    from modelscope_hub.errors import FileDownloadError

    def full_disk(*args, **kwargs):
        full = OSError(errno.ENOSPC, "No space left on device")
        raise FileDownloadError("1 of 5 file(s) failed", failed_files={"model.safetensors": full})

    monkeypatch.setattr(fetch_module, "_modelscope_client", lambda: full_disk)
    text = error_of(EMBED, mirror.url, models_dir)
    assert "disk filled up" in text and "needs 1.0 MiB" in text and "free space" in text


# --------------------------------------------------------------------------------------------------
# Local folders: never the network


def test_hub_none_with_a_missing_folder_fails_without_network(mirror, models_dir):
    spec = spec_for(mirror.url, models_dir, hub="none")
    with pytest.raises(HubError) as caught:
        download_model(candidate(EMBED, models_dir, downloadable=False), spec, environ={})
    assert "does not exist" in caught.value.message and str(models_dir / EMBED) in caught.value.message
    assert "modelscope download --model acme/tiny-embed" in caught.value.render()
    assert settled_log(mirror) == []


def test_hub_none_with_a_complete_folder(mirror, mirror_root, models_dir):
    spec = spec_for(mirror.url, models_dir, hub="none")
    shutil.copytree(mirror_root / EMBED, models_dir / EMBED)
    result = download_model(candidate(EMBED, models_dir, downloadable=False), spec, environ={})
    assert result.skipped and result.folder == models_dir / EMBED
    assert settled_log(mirror) == []


def test_local_path_without_weights(mirror_root, models_dir):
    c = candidate(README_ONLY, models_dir, downloadable=False, folder=mirror_root / README_ONLY)
    with pytest.raises(HubError, match="holds no weights"):
        local_folder_check(c)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({}, "is empty"),
        ({"model.gguf": b"GGUF"}, None),
        ({"modules.json": b'[{"path": "0_Transformer"}]', "0_Transformer/pytorch_model.bin": b"x"}, None),
        ({"modules.json": b"[]", "0_Transformer/pytorch_model.bin": b"x"}, "no weights"),  # not a module folder
        ({"model.safetensors": b"x"}, "no model config"),
        ({"config.json": b"{}", "model.safetensors.incomplete": b"x"}, "no weights"),
    ],
)
def test_model_folder_problem(tmp_path, files, problem):
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    found = download.model_folder_problem(tmp_path)
    assert (found is None) if problem is None else (problem in found)


def test_record_survives_json_garbage(mirror, models_dir):
    fetch(EMBED, mirror.url, models_dir)
    (models_dir / EMBED / folder_module.RECORD).write_text(json.dumps({"files": [1, 2]}))
    assert not fetch(EMBED, mirror.url, models_dir).skipped


def test_a_local_folder_is_judged_by_its_top_level_only(tmp_path, monkeypatch):
    """`local_path: /data` must not walk the whole tree below it (issue 9, #19): a model's config and
    weights sit at its top level, so that is all `model_folder_problem` looks at."""
    from provision.download import folder as folder_module

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "deep" / "er").mkdir(parents=True)

    def no_walk(*args, **kwargs):
        raise AssertionError("model_folder_problem walked below the folder's top level")

    monkeypatch.setattr(folder_module.os, "walk", no_walk)
    assert download.model_folder_problem(tmp_path) is None
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "deep" / "model.safetensors").write_bytes(b"x")
    assert "holds no weights" in download.model_folder_problem(tmp_path)


def test_plan_reads_only_a_local_folders_model_files(tmp_path, monkeypatch):
    """The plan's weight sizes of a `local_path` come from the same top-level look (issue 9, #19)."""
    from provision.download import folder as folder_module
    from provision.manifest import load
    from provision.observe import observe

    model = tmp_path / "weights"
    (model / "deep").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 10)
    (model / "deep" / "other.bin").write_bytes(b"y")
    manifest = tmp_path / "m.yml"
    manifest.write_text(f"version: 1\nname: s\nmodels:\n  - role: embedding\n    uid: e\n    name: bge-small-en-v1.5\n"
                        f"    local_path: {model}\nroles: {{chat: 0, rerank: 0}}\n")
    monkeypatch.setattr(folder_module.os, "walk", lambda *a, **k: (_ for _ in ()).throw(AssertionError("walked")))
    observed = observe(load(str(manifest)), None, None)
    assert observed.local_files[model] == {"config.json": 2, "model.safetensors": 10}
