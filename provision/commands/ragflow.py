"""`provision ragflow`: the RAGFlow settings of what is up; `ragflow apply` registers it in a running RAGFlow,
`ragflow status` compares what RAGFlow has with it."""

from __future__ import annotations

from dataclasses import dataclass

from .. import auth
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ProvisionError
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



# -- provision ragflow apply / status -------------------------------------------------------------------


@dataclass
class ApplyCommandResult:
    result: object  # ragflow.result.ApplyResult
    exit_code: int


@dataclass
class StatusCommandResult:
    result: object  # ragflow.result.StatusResult
    exit_code: int


def _target(state_dir: StateDir, url: str | None, instance: str | None):
    from ..errors import UsageError
    from ..manifest import load
    from ..ragflow.register import target_for

    state = state_dir.require()
    settings = None
    try:
        settings = load(state.manifest).ragflow if state.manifest else None
    except ProvisionError:
        if not url:
            raise
    target = target_for(settings, state.name, url=url, instance=instance)
    if target is None:
        raise UsageError(f"no RAGFlow to apply to: {state.manifest} has no ragflow.url",
                         hint="add ragflow.url (e.g. http://127.0.0.1:9380, RAGFlow's API server) or pass --url")
    return state, target


def ragflow_apply(state_dir: StateDir, *, url: str | None = None, instance: str | None = None, dry_run: bool = False,
                  switch_embedding: bool = False) -> ApplyCommandResult:
    from ..ragflow.register import register

    state, target = _target(state_dir, url, instance)
    result = register(state_dir, state, target, dry_run=dry_run, switch_embedding=switch_embedding)
    return ApplyCommandResult(result, EXIT_OK if result.ok or dry_run else EXIT_PARTIAL)


def ragflow_status(state_dir: StateDir, *, url: str | None = None, instance: str | None = None) -> StatusCommandResult:
    from ..ragflow.register import inspect

    state, target = _target(state_dir, url, instance)
    result = inspect(state_dir, state, target)
    return StatusCommandResult(result, EXIT_OK if result.in_sync else EXIT_FAILED)
