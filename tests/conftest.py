"""Fixtures shared by test modules."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import cmdline, pid_alive, port_free

pytest_plugins = ["download_support"]  # the mirror and tiny repos of the download tests


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch):
    """The one retry policy (provision/retry.py) without its back-off waits."""
    from provision import retry

    monkeypatch.setattr(retry, "BACKOFF_S", 0)


@pytest.fixture()
def reaper(tmp_path: Path):
    """Yield a folder for stand-in programs, which append their PIDs to `pids` there; afterwards kill, by
    PID, whatever they left running (only processes whose command line names this folder), and fail the
    test when that was needed."""
    yield tmp_path
    pids_file = tmp_path / "pids"
    pids = [int(p) for p in pids_file.read_text().split()] if pids_file.exists() else []
    leftovers = [p for p in pids if pid_alive(p) and str(tmp_path) in " ".join(cmdline(p))]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left running: {leftovers}"


@pytest.fixture()
def invoke():
    """Run the CLI in-process: invoke(args) -> click's Result, stdout and stderr kept apart."""
    from click.testing import CliRunner

    from provision.cli import cli

    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart by default

    def run(args, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], **kwargs)

    return run


@pytest.fixture()
def modelscope_client_env(tmp_path, monkeypatch):
    """The real modelscope client, writing only under tmp, quiet, and with every retry instant.

    Its settings are read at import time and cached in a process-wide config (reference/modelscope.md
    §7.4-7.5), so the env vars are set, the back-off globals patched, and the config reset around a test.
    """
    from modelscope_hub import _download, _legacy_api, config

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "false")
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.setattr(_download, "DOWNLOAD_RETRY_MAX_DELAY_SECONDS", 0)
    monkeypatch.setattr(_download, "DOWNLOAD_INTEGRITY_RETRY_BACKOFF", 0)
    monkeypatch.setattr(_legacy_api, "REPO_TREE_PAGE_RETRY_MAX_DELAY_SECONDS", 0)
    config.set_default_config(None)
    yield
    config.set_default_config(None)


@pytest.fixture()
def xinference():
    """A tiny Xinference stand-in on loopback (tests/ragflow_standin.py) for the RAGFlow tests to call."""
    from ragflow_standin import TinyXinference

    with TinyXinference() as server:
        port = server.port
        yield server
    assert port_free(port)


@pytest.fixture()
def standin():
    """The RAGFlow stand-in (tests/ragflow_standin.py), with a 2 s verify limit so timeouts test quickly."""
    from ragflow_standin import RagflowStandin

    with RagflowStandin(verify_timeout=2.0) as server:
        port = server.port
        yield server
    assert port_free(port)
