"""The stack as RAGFlow is to have it, and the sign-in to RAGFlow: what `up` and `provision ragflow apply`
and `status` share. The state says what runs (uids, types, max tokens, dimensions) and where (the Base
URL RAGFlow can reach, the key); the manifest's `ragflow:` section says where RAGFlow is and how to sign
in, with the secrets only in the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from .. import auth
from .. import verify as checks
from ..errors import ProvisionError, UsageError
from ..state import State, StateDir
from . import config

DEFAULT_TOKEN_ENV = "RAGFLOW_API_TOKEN"  # where the token is looked for when the manifest names no variable
ROLE_TYPES = {"chat": "chat", "embedding": "embedding", "rerank": "rerank"}


@dataclass(frozen=True)
class Target:
    """Where RAGFlow is, the instance the stack gets there, and the names of the variables with the secrets."""

    url: str
    instance: str
    api_token_env: str | None = None
    email: str | None = None
    password_env: str | None = None


def target_for(settings, stack_name: str, *, url: str | None = None, instance: str | None = None) -> Target | None:
    """The target from the manifest's `ragflow:` (settings; None when the manifest cannot be read), the flags
    winning. None: no RAGFlow to apply to."""
    url = url or (settings.url if settings is not None else None)
    if not url:
        return None
    return Target(url.rstrip("/"), instance or (settings.instance if settings is not None else None) or stack_name,
                  settings.api_token_env if settings is not None else None,
                  settings.email if settings is not None else None,
                  settings.password_env if settings is not None else None)


def connect(target: Target, environ: Mapping[str, str] | None = None):
    """A client signed in to RAGFlow: with the API token in its variable, else with the email and password."""
    from .api import RagflowClient  # requests and the RSA key only when RAGFlow is used

    environ = os.environ if environ is None else environ
    if target.email:
        password = environ.get(target.password_env or "")
        if not password:
            raise UsageError(f"ragflow.password_env: ${target.password_env} is not set (the password of {target.email})",
                             hint=f"export {target.password_env}=... before running provision")
        return RagflowClient.connect(target.url, email=target.email, password=password)
    variable = target.api_token_env or DEFAULT_TOKEN_ENV
    token = environ.get(variable)
    if not token:
        said = "ragflow.api_token_env" if target.api_token_env else f"no ragflow.api_token_env, and ${variable}"
        raise UsageError(f"{said}: ${variable} is not set, so provision cannot sign in to RAGFlow at {target.url}",
                         hint=f"make an API token in RAGFlow (avatar -> API -> API key) and `export {variable}=...`, "
                         "or set ragflow.email and ragflow.password_env")
    return RagflowClient.connect(target.url, api_token=token)


def desired(state_dir: StateDir, state: State, target: Target, *, docker: bool | None = None):
    """(Desired, warnings): the stack's running models with RAGFlow's numbers, at the Base URL RAGFlow uses."""
    from .model import Desired, StackModel

    use_docker = state.ragflow_docker if docker is None else docker
    key = auth.api_key_for(state_dir, state.server) if state.server is not None else None
    provider = config.build_provider(state, key)
    warnings = list(provider["warnings"])
    models = []
    for entry in provider["models"]:
        if entry["max_tokens"] is None:
            warnings.append(f"{entry['uid']}: its max tokens are not known (not from the server, not from the catalog): "
                            "not registered in RAGFlow; add it there by hand with the number from its model card")
            continue
        models.append(StackModel(entry["uid"], ROLE_TYPES.get(entry["role"], entry["role"]), int(entry["max_tokens"]),
                                 entry.get("dimensions")))
    url = provider["docker_base_url"] if use_docker else provider["base_url"]
    return Desired(target.instance, url, provider["api_key"], models, dimensions_of=catalog_dimensions), warnings


def catalog_dimensions(ref: str) -> int | None:
    """The dimensions of an embedding model as RAGFlow names it (`BAAI/bge-m3@BAAI`, `bge-m3@inst@Xinference`),
    from Xinference's catalog; None when it does not know the name."""
    from ..catalog import sources

    name = ref.split("@", 1)[0].rsplit("/", 1)[-1]
    family = sources.local().family("embedding", name) if name else None
    return family.dimensions if family is not None else None


def warmer(state_dir: StateDir, state: State) -> Callable:
    """One real request to a model right before RAGFlow's own check, which gives it 10 s: a cold model fails it."""
    client = auth.key_client(state_dir, state.server)
    records = {m.uid: m for m in state.models}

    def warm(model) -> None:
        record = records.get(model.uid)
        if record is None:
            return
        try:
            checks.verify_model(client, record)
        except ProvisionError:
            pass  # RAGFlow's check says what is wrong, from its side

    return warm


def register(state_dir: StateDir, state: State, target: Target, *, dry_run: bool = False,
             switch_embedding: bool = False, docker: bool | None = None, environ: Mapping[str, str] | None = None):
    """Make RAGFlow have the stack (ragflow/apply.py); the ApplyResult, with the stack's own warnings."""
    from .apply import apply

    wanted, warnings = desired(state_dir, state, target, docker=docker)
    client = connect(target, environ)
    result = apply(client, wanted, dry_run=dry_run, switch_embedding=switch_embedding,
                   warm=None if dry_run else warmer(state_dir, state))
    result.warnings[:0] = warnings
    return result


def inspect(state_dir: StateDir, state: State, target: Target, *, docker: bool | None = None,
            environ: Mapping[str, str] | None = None):
    """What RAGFlow has for the stack next to what it should have (reads only)."""
    from .apply import status

    wanted, warnings = desired(state_dir, state, target, docker=docker)
    result = status(connect(target, environ), wanted)
    result.warnings[:0] = warnings
    return result


def plan_warnings(manifest, environ: Mapping[str, str] | None = None) -> list[str]:
    """What `plan` says about RAGFlow when the manifest names one: datasets whose chunks were embedded with
    another model (the embedding guard `up` will apply), or that RAGFlow could not be asked."""
    from .apply import datasets_on_other_embedding
    from .calls import model_ref
    from .model import Desired, StackModel
    from .result import EmbeddingGuard

    target = target_for(manifest.ragflow, manifest.name)
    embedding = next((m for m in manifest.models if m.role == "embedding"), None)
    if target is None or embedding is None or not manifest.ragflow.apply:
        return []
    catalog = manifest._catalog
    family = catalog.family("embedding", embedding.name) if catalog is not None and embedding.name else None
    ours = family.dimensions if family is not None else None
    wanted = Desired(target.instance, "", "", [StackModel(embedding.uid, "embedding", 0, ours)],
                     dimensions_of=catalog_dimensions)
    try:
        client = connect(target, environ)
        ref = model_ref(embedding.uid, target.instance, client.version().generation)
        used = datasets_on_other_embedding(client, wanted, ref, client.version().generation)
    except ProvisionError as exc:
        return [f"RAGFlow at {target.url} was not asked about its datasets: {exc.message}"]
    if not used:
        return []
    guard = EmbeddingGuard(None, ref, ours, used, held=True)
    lines = guard.lines()[:-1]  # apply's own "was NOT switched": plan says what up will do instead
    lines.append("  `up` will not make it the default embedding model; `provision ragflow apply --switch-embedding` "
                 "switches it after RAGFlow's own check of each dataset")
    return ["\n".join(lines)]
