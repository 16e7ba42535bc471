"""`provision ragflow`: the RAGFlow settings of what is up."""

from __future__ import annotations

from dataclasses import dataclass

from .. import auth
from ..ragflow import config as ragflow_config
from ..state import StateDir


@dataclass
class RagflowResult:
    provider: dict
    docker: bool
    paste: str
    files: dict[str, str]


def ragflow(state_dir: StateDir, docker: bool | None = None, show_key: bool = False) -> RagflowResult:
    state = state_dir.require()
    use_docker = state.ragflow_docker if docker is None else docker
    if show_key and state.server is not None:
        key = auth.api_key_for(state_dir, state.server)
    else:
        key = ragflow_config.HIDDEN_KEY if auth.has_key(state.server) else None
    provider = ragflow_config.build_provider(state, key)
    files = {
        name: str(path)
        for name, path in ragflow_config.config_paths(state_dir).items()
        if path.exists()
    }
    return RagflowResult(provider, use_docker, ragflow_config.paste_block(provider, docker=use_docker), files)

