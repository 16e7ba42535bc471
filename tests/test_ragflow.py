"""provision.ragflow: URLs, provider.json, the service_conf block and the paste block."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from provision.errors import StateError
from provision.ragflow.config import (
    base_url,
    base_url_of,
    build_provider,
    config_paths,
    docker_base_url,
    paste_block,
    service_conf_block,
    write_config,
)
from provision.state import ModelRecord, ServerRecord, State, StateDir


def make_state(host: str = "0.0.0.0", port: int = 9997, docker: bool = False) -> State:
    return State(
        manifest="stack.yaml",
        name="demo",
        server=ServerRecord(url=f"http://127.0.0.1:{port}", managed=True, host=host, port=port),
        models=[
            ModelRecord(role="chat", uid="qwen-chat", model_type="LLM", status="running",
                        name="qwen2.5-instruct", engine="Transformers", context_length=32768,
                        numbers_from={"context_length": "the server (GET /v1/models/qwen-chat)"}),
            ModelRecord(role="embedding", uid="bge-emb", model_type="embedding", status="running",
                        name="bge-small-en-v1.5", engine="sentence_transformers", dimensions=384, context_length=512,
                        numbers_from={"dimensions": "the server (GET /v1/models/bge-emb)",
                                      "context_length": "the catalog (xinference 4.1.0 (installed)): `bge-small-en-v1.5`"}),
            ModelRecord(role="rerank", uid="bge-rr", model_type="rerank", status="running",
                        name="bge-reranker-base", engine="sentence_transformers"),
            ModelRecord(role="rerank", uid="broken-rr", model_type="rerank", status="failed"),
        ],
        ragflow_docker=docker,
    )


@pytest.mark.parametrize("host, expected", [
    ("0.0.0.0", "http://127.0.0.1:9997"),
    ("::", "http://[::1]:9997"),  # as for every client of a :: server (netaddr.connect_host)
    ("", "http://127.0.0.1:9997"),
    ("127.0.0.1", "http://127.0.0.1:9997"),
    ("10.1.2.3", "http://10.1.2.3:9997"),
    ("fe80::1", "http://[fe80::1]:9997"),
])
def test_base_url(host, expected):
    url = base_url(host, 9997)
    assert url == expected
    assert not url.endswith("/") and not url.endswith("/v1")  # RAGFlow adds /v1; with it, its model list is empty


@pytest.mark.parametrize("host, expected", [
    ("0.0.0.0", "http://host.docker.internal:9997"),
    ("127.0.0.1", "http://host.docker.internal:9997"),
    ("localhost", "http://host.docker.internal:9997"),
    ("10.1.2.3", "http://10.1.2.3:9997"),
])
def test_docker_base_url(host, expected):
    assert docker_base_url(host, 9997) == expected
    assert docker_base_url("0.0.0.0", 9997, "172.17.0.1") == "http://172.17.0.1:9997"


def test_build_provider_lists_running_models_only():
    provider = build_provider(make_state())
    assert provider["provider"] == "Xinference" and provider["generated_by"] == "provision"
    assert provider["base_url"] == "http://127.0.0.1:9997"
    assert provider["docker_base_url"] == "http://host.docker.internal:9997"
    assert provider["openai_base_url"] == "http://127.0.0.1:9997/v1"  # for OpenAI clients, which do not add it
    assert provider["api_key"] == "x" and provider["server_auth"] is False  # never empty: RAGFlow refuses that
    assert [m["uid"] for m in provider["models"]] == ["qwen-chat", "bge-emb", "bge-rr"]
    chat, emb, rr = provider["models"]
    assert chat == {"role": "chat", "model_type": "chat", "uid": "qwen-chat", "max_tokens": 32768,
                    "max_tokens_source": "the server (GET /v1/models/qwen-chat)", "name": "qwen2.5-instruct",
                    "engine": "Transformers"}
    assert emb["model_type"] == "embedding" and emb["max_tokens"] == 512
    assert emb["max_tokens_source"].startswith("the catalog (xinference 4.1.0") and emb["dimensions"] == 384
    assert emb["dimensions_source"] == "the server (GET /v1/models/bge-emb)"
    assert rr["model_type"] == "rerank" and rr["max_tokens"] is None and rr["max_tokens_source"] == "unknown"  # never a default
    assert provider["warnings"] == []


def test_build_provider_warns_about_loopback_with_docker_and_missing_roles():
    state = make_state(host="127.0.0.1", docker=True)
    state.models = state.models[:2]
    warnings = build_provider(state)["warnings"]
    assert any("cannot reach" in w and "0.0.0.0" in w for w in warnings)
    assert any("no running rerank" in w for w in warnings)


def test_base_url_of_state_uses_bind_host_or_url():
    assert base_url_of(make_state(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    external = make_state()
    external.server = ServerRecord(url="https://xinf.example:8443/", managed=False)
    assert base_url_of(external) == "https://xinf.example:8443"


def test_build_provider_without_server():
    state = make_state()
    state.server = None
    with pytest.raises(StateError):
        build_provider(state)


def test_write_config(tmp_path):
    state_dir = StateDir(tmp_path / "st")
    assert not any(p.exists() for p in config_paths(state_dir).values())
    paths = write_config(state_dir, make_state(), api_key="xf-secret")
    assert paths == config_paths(state_dir)
    assert paths["provider"] == tmp_path / "st" / "ragflow" / "provider.json"
    assert paths["service_conf"] == tmp_path / "st" / "ragflow" / "service_conf.user_default_llm.yaml"
    provider = json.loads(paths["provider"].read_text())
    assert provider["api_key"] == "xf-secret"
    assert [m["uid"] for m in provider["models"]] == ["qwen-chat", "bge-emb", "bge-rr"]
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the API key
    assert not list((tmp_path / "st" / "ragflow").glob(".*"))  # no temporary files left
    conf = yaml.safe_load(paths["service_conf"].read_text())
    assert conf["user_default_llm"]["api_key"] == "xf-secret"


@pytest.mark.parametrize("docker", [False, True])
def test_service_conf_block(docker):
    provider = build_provider(make_state(docker=docker))
    text = service_conf_block(provider, docker=docker)
    assert text.startswith("#")
    assert "only to users created after" in text and "llm_factories.json" in text and "v0.26+" in text
    conf = yaml.safe_load(text)["user_default_llm"]
    url = "http://host.docker.internal:9997" if docker else "http://127.0.0.1:9997"
    assert conf["factory"] == "Xinference" and conf["base_url"] == url
    models = conf["default_models"]
    assert models["chat_model"] == {"name": "qwen-chat", "factory": "Xinference", "base_url": url, "api_key": "x"}
    assert models["embedding_model"]["name"] == "bge-emb"
    assert models["rerank_model"]["name"] == "bge-rr"


def test_paste_block_docker():
    provider = build_provider(make_state(docker=True))
    text = paste_block(provider, docker=True)
    assert "http://host.docker.internal:9997" in text
    for uid in ("qwen-chat", "bge-emb", "bge-rr"):
        assert uid in text
    assert "broken-rr" not in text
    assert "Max tokens: 32768" in text
    assert "verbatim" in text
    assert "API key:    x    (the server has no authentication: type any non-empty key" in text
    assert "no /v1" in text


def test_paste_block_local():
    provider = build_provider(make_state(), api_key="xf-key")
    text = paste_block(provider, docker=False)
    assert "http://127.0.0.1:9997" in text and "host.docker.internal" not in text
    assert "xf-key" in text
