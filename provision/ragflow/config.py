"""What RAGFlow needs to use the running models: provider.json, a service_conf block, a paste-able summary.

RAGFlow calls Xinference with the Model UID verbatim as the model name. The Base URL it gets is the server
ROOT, `http://HOST:PORT`, with no /v1 and no trailing slash, the one form that works on every version
(measured on v0.27.0, reference/ragflow.md): RAGFlow adds /v1 itself (urljoin(base, "v1") on 0.19-0.26,
os.path.join on <= 0.18), its model discovery asks base + /v1/models (so `.../v1` lists nothing: the UI's
model picker stays empty), and its rerank client posts to /v1/rerank at the root, dropping any path.

The key is never empty: RAGFlow 0.27's chat and embedding clients refuse an empty key ("Missing
credentials", shown as "Internal server error"). For a server without authentication any key works;
provision writes `x`, which RAGFlow's rerank client also treats as "no key".

How models get into RAGFlow, by version (ragflow/apply.py does it through RAGFlow's API):
  <= v0.25   POST /v1/llm/add_llm {llm_factory, llm_name, model_type, api_base, api_key, max_tokens};
             referenced as name@Xinference
  >= v0.26   /api/v1/providers/Xinference/instances (+ .../models); referenced as name@instance@Xinference
service_conf.yaml's `user_default_llm` is NOT enough on its own for Xinference (see _SERVICE_CONF_LIMITS).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .. import netaddr
from ..errors import StateError
from ..state import ModelRecord, State, StateDir, write_atomic

PROVIDER = "Xinference"
DEFAULT_DOCKER_HOST = "host.docker.internal"  # RAGFlow's docker-compose maps it to the host (host-gateway)
RAGFLOW_MODEL_TYPE = {"chat": "chat", "embedding": "embedding", "rerank": "rerank"}  # role -> RAGFlow form
NO_KEY = "x"  # RAGFlow's own "no key" placeholder: its rerank client then sends no Authorization header
HIDDEN_KEY = "(hidden; --show-key to print)"  # what is shown instead of a key: only provider.json holds it


# -- URLs ---------------------------------------------------------------------------------------------


def base_url(host: str, port: int, *, scheme: str = "http") -> str:
    """RAGFlow's Base URL for a RAGFlow on this machine: http://HOST:PORT, no /v1, no trailing slash (a
    wildcard listen address through loopback, netaddr.connect_host)."""
    return netaddr.url_for(host, port, scheme)


def docker_base_url(host: str, port: int, docker_host: str = DEFAULT_DOCKER_HOST, *, scheme: str = "http") -> str:
    """The Base URL for RAGFlow running in Docker on this machine.

    Inside a container, 127.0.0.1 is the container itself, so a server on this machine (wildcard or
    loopback bind) is reached through `docker_host`. A server on another address is reached directly.
    """
    if netaddr.is_wildcard(host) or netaddr.is_loopback(host):
        host = docker_host
    return netaddr.url_for(host, port, scheme)


def base_url_of(state: State) -> str:
    """The local Base URL of the state's server (what `status` shows)."""
    host, port, scheme = _server_address(state)
    return base_url(host, port, scheme=scheme)


def _server_address(state: State) -> tuple[str, int, str]:
    """(host, port, scheme) of the state's server: the bind host when provision started it, else its URL."""
    if state.server is None:
        raise StateError("the state has no Xinference server", hint="run `provision up MANIFEST` first")
    parts = urlsplit(state.server.url)
    scheme = parts.scheme or "http"
    host = state.server.host or parts.hostname or ""
    port = state.server.port or parts.port or (443 if scheme == "https" else 80)
    return host, port, scheme


# -- provider.json ------------------------------------------------------------------------------------


def build_provider(state: State, api_key: str | None = None) -> dict:
    """Everything RAGFlow needs, as one JSON-able dict: URLs, key, and each running model's form values."""
    host, port, scheme = _server_address(state)
    docker_host = state.docker_host or DEFAULT_DOCKER_HOST
    running = [m for m in state.models if m.status == "running"]
    warnings = []
    unreachable = netaddr.docker_cannot_reach(host, docker_host) if state.ragflow_docker else None
    if unreachable:
        warnings.append(unreachable)
    missing = [role for role in RAGFLOW_MODEL_TYPE if not any(m.role == role for m in running)]
    if missing:
        warnings.append(f"no running {', '.join(missing)} model: RAGFlow will need one from elsewhere")
    local = base_url(host, port, scheme=scheme)
    return {
        "provider": PROVIDER,
        "base_url": local,  # what RAGFlow is given: the root (module docstring)
        "docker_base_url": docker_base_url(host, port, docker_host, scheme=scheme),
        "openai_base_url": local + "/v1",  # what an OpenAI client is given
        "api_key": api_key or NO_KEY,
        "server_auth": bool(api_key),
        "ragflow_docker": state.ragflow_docker,
        "models": [_model_entry(m) for m in running],
        "warnings": warnings,
        "generated_by": "provision",
        "manifest": state.manifest,
        "stack": state.name,
    }


def redacted(provider: dict) -> dict:
    """The provider as it may be shown or printed as JSON: a real API key replaced by HIDDEN_KEY."""
    return {**provider, "api_key": HIDDEN_KEY} if provider.get("server_auth") else dict(provider)


def _model_entry(record: ModelRecord) -> dict:
    # For chat, context_length is the context; for embedding and rerank, the most tokens one input may have.
    # They come from the server or the catalog (apply/models.py), never from a default: an unknown one is
    # said to be unknown, and the paste block asks for it.
    entry = {
        "role": record.role,
        "model_type": RAGFLOW_MODEL_TYPE.get(record.role, record.role),
        "uid": record.uid,
        "max_tokens": record.context_length,
        "max_tokens_source": record.numbers_from.get("context_length", "unknown"),
        "name": record.name,
        "engine": record.engine,
    }
    if record.role == "embedding":
        entry["dimensions"] = record.dimensions
        entry["dimensions_source"] = record.numbers_from.get("dimensions", "unknown")
    return entry


def _url_for(provider: dict, docker: bool) -> str:
    return provider["docker_base_url"] if docker else provider["base_url"]


# -- service_conf.yaml --------------------------------------------------------------------------------

_SERVICE_CONF_LIMITS = """\
# user_default_llm for RAGFlow's conf/service_conf.yaml, generated by provision.
# Its limits for Xinference (RAGFlow issues #587 #3841 #8926 #15860 #17338):
#   - it applies only to users created after RAGFlow starts with it; existing users keep their models;
#   - RAGFlow 0.20.2-0.25 creates model rows only for models listed in conf/llm_factories.json, whose
#     Xinference list is empty: "Model(...) not authorized" unless these models are added there;
#   - RAGFlow v0.26+ only sets the default model IDs; the models themselves are not added;
#   - the per-model {name, factory, base_url, api_key} form needs RAGFlow v0.20.2+ (#9404).
# The reliable path: add the models in the UI (Model providers -> Xinference -> Add model) or through
# the provider API, with the values in provider.json (`provision ragflow` prints them).
"""


def service_conf_block(provider: dict, docker: bool) -> str:
    """The `user_default_llm:` YAML block, preceded by a comment stating its limits."""
    url = _url_for(provider, docker)
    key = provider["api_key"]  # written to a 0600 file only; never printed
    defaults = {}
    for role in RAGFLOW_MODEL_TYPE:
        model = next((m for m in provider["models"] if m["role"] == role), None)
        if model is not None:
            defaults[f"{role}_model"] = {"name": model["uid"], "factory": PROVIDER, "base_url": url, "api_key": key}
    block = {"user_default_llm": {"factory": PROVIDER, "api_key": key, "base_url": url, "default_models": defaults}}
    return _SERVICE_CONF_LIMITS + yaml.safe_dump(block, sort_keys=False, default_flow_style=False)


# -- files --------------------------------------------------------------------------------------------


def config_paths(state_dir: StateDir) -> dict[str, Path]:
    """Where write_config puts its files (they may not exist yet)."""
    return {
        "provider": state_dir.ragflow_dir / "provider.json",
        "service_conf": state_dir.ragflow_dir / "service_conf.user_default_llm.yaml",
    }


def write_config(state_dir: StateDir, state: State, api_key: str | None = None) -> dict[str, Path]:
    """Write ragflow/provider.json and ragflow/service_conf.user_default_llm.yaml atomically (0600: a key)."""
    provider = build_provider(state, api_key)
    state_dir.ensure()
    paths = config_paths(state_dir)
    write_atomic(paths["provider"], json.dumps(provider, indent=2) + "\n", mode=0o600)
    write_atomic(paths["service_conf"], service_conf_block(provider, state.ragflow_docker), mode=0o600)
    return paths


# -- the paste-able summary ---------------------------------------------------------------------------


def paste_block(provider: dict, docker: bool) -> str:
    """What a person types into RAGFlow's "Model providers -> Xinference -> Add model" form, per model."""
    url = _url_for(provider, docker)
    where = "RAGFlow runs in Docker" if docker else "RAGFlow runs on this machine"
    lines = [
        "RAGFlow: Model providers -> Xinference -> Add model, once per model:",
        f"  Base URL:   {url}    ({where}; no /v1 and no trailing slash: RAGFlow adds /v1, and with it "
        "the model list stays empty)",
    ]
    if docker:
        lines.append(f"              (RAGFlow outside Docker on this machine: {provider['base_url']})")
    if provider.get("server_auth"):
        lines.append(f"  API key:    {provider['api_key']}")
    else:
        lines.append(f"  API key:    {provider['api_key']}    (the server has no authentication: type any non-empty key; "
                     "RAGFlow cannot add a chat or embedding model with an empty one)")
    width = max((len(m["uid"]) for m in provider["models"]), default=0)
    for model in provider["models"]:
        source = model.get("max_tokens_source") or "unknown"
        note = "  (unknown: look it up on the model's card)" if model.get("max_tokens") is None else \
            ("" if source.startswith("the server") else "  (from the catalog)")
        lines.append(f"  {model['model_type']:<10}  Model UID: {model['uid']:<{width}}  "
                     f"Max tokens: {model['max_tokens']}{note}")
    if not provider["models"]:
        lines.append("  (no running models)")
    lines.append("Use each Model UID verbatim: it is the Xinference model UID, not the model's name.")
    lines.extend(f"warning: {w}" for w in provider.get("warnings", []))
    return "\n".join(lines) + "\n"
