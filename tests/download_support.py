"""The download tests' world: tiny repos on the mirror (in-process, on loopback), candidates and specs for
them, and helpers that run the real `modelscope` client against it. Loaded as a pytest plugin (conftest),
so its fixtures serve every module that tests downloads.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest

from provision.download import DownloadResult, download_model
from provision.errors import HubError
from provision.manifest import Candidate, DownloadSpec
from provision.mirror import MirrorServer

EMBED, CHAT, README_ONLY = "acme/tiny-embed", "acme/tiny-chat", "acme/readme-only"
WEIGHTS = hashlib.shake_256(b"provision-download-test").digest(1024 * 1024)
REPOS = {
    EMBED: {
        "config.json": b'{"model_type": "bert"}',
        "modules.json": b"[]",
        "tokenizer.json": b'{"version": "1.0"}',
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "model.safetensors": WEIGHTS,
    },
    CHAT: {"config.json": b'{"model_type": "qwen3"}', "model.safetensors": WEIGHTS[:4096]},
    README_ONLY: {"README.md": b"# weights elsewhere\n", "config.json": b"{}"},
}
TOKEN_ENV = "TEST_HUB_TOKEN"


@pytest.fixture()
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    for model, files in REPOS.items():
        for rel, data in files.items():
            (root / model / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / model / rel).write_bytes(data)
    return root


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture()
def start_mirror(mirror_root):
    started = []

    def start(**kwargs) -> MirrorServer:
        started.append(MirrorServer(mirror_root, **kwargs).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()
        assert _port_closed(server.port)


@pytest.fixture()
def mirror(start_mirror) -> MirrorServer:
    return start_mirror()


@pytest.fixture()
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


def candidate(source: str, models_dir: Path, *, uid: str | None = None, downloadable: bool = True,
              folder: Path | None = None) -> Candidate:
    return Candidate(
        role="embedding", model_type="embedding", model_index=0, position=0,
        uid=uid or source.split("/")[1], name="bge-m3", source=source, revision=None,
        engine="sentence_transformers", gpu_memory_utilization=None, size_in_billions=None, format=None,
        quantization=None, n_gpu=None, gpu_idx=None, worker_ip=None, replica=1,
        folder=folder or models_dir / source, downloadable=downloadable,
    )


def spec_for(endpoint: str | None, models_dir: Path, **kwargs) -> DownloadSpec:
    return DownloadSpec(endpoint=endpoint, token_env=TOKEN_ENV, models_dir=str(models_dir), **kwargs)


def settled_log(mirror: MirrorServer) -> list:
    """The request log once no answer is still being logged (the server logs after the last byte)."""
    count, deadline = -1, time.monotonic() + 2
    while count != len(mirror.request_log) and time.monotonic() < deadline:
        count = len(mirror.request_log)
        time.sleep(0.05)
    return list(mirror.request_log)


def fetched_files(mirror: MirrorServer) -> list[str]:
    return [r.file for r in settled_log(mirror) if r.file is not None]


def fetch(source: str, mirror_url: str | None, models_dir: Path, environ: dict | None = None, **kwargs) -> DownloadResult:
    return download_model(candidate(source, models_dir), spec_for(mirror_url, models_dir), environ=environ or {}, **kwargs)


def raised(source: str, endpoint: str | None, models_dir: Path, environ: dict | None = None) -> HubError:
    with pytest.raises(HubError) as caught:
        fetch(source, endpoint, models_dir, environ)
    return caught.value


def error_of(source: str, endpoint: str | None, models_dir: Path, environ: dict | None = None) -> str:
    """The error as the CLI renders it: message, then the hint."""
    return raised(source, endpoint, models_dir, environ).render()


