"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest


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
