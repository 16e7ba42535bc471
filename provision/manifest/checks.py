"""Checks that need several fields at once: uids unique across the manifest, engines valid for the role,
the role counts, server access (an open API only on loopback), the cluster's ports.

They read the raw (interpolated) data, so they run even when the structure has errors too, and the user
sees every problem at once.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .. import netaddr
from ..engines import ENGINE_ALIASES, ENGINES, MODEL_TYPE_OF_ROLE, ROLES, canonical_engine
from ..errors import Problem
from .source import format_path, line_of

_BOOL = TypeAdapter(bool)


def _as_bool(value: Any) -> bool | None:
    """The boolean the schema will read from `value` (`'false'`, `0`, `off` are False), None if none."""
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return None


def check(data: dict, lines: dict | None = None) -> list[Problem]:
    lines = lines or {}
    problems: list[Problem] = []

    def add(loc: tuple, message: str, hint: str | None = None) -> None:
        problems.append(Problem(format_path(loc), message, line=line_of(lines, loc), hint=hint))

    models = data.get("models")
    models = models if isinstance(models, list) else []
    download = data.get("download") if isinstance(data.get("download"), dict) else {}
    offline = download.get("hub") == "none"
    owner_of_uid: dict[str, tuple[int, tuple]] = {}  # uid -> (model index, entry that claimed it first)
    counts = {role: 0 for role in ROLES}
    for i, spec in enumerate(models):
        if not isinstance(spec, dict):
            continue
        role = spec.get("role") if isinstance(spec.get("role"), str) else None
        if role in counts:
            counts[role] += 1
        fallbacks = spec.get("fallbacks") if isinstance(spec.get("fallbacks"), list) else []
        entries = [(("models", i), spec)]
        entries += [(("models", i, "fallbacks", j), fb) for j, fb in enumerate(fallbacks) if isinstance(fb, dict)]
        for loc, entry in entries:
            uid = entry.get("uid")
            if isinstance(uid, str):
                owner, owner_loc = owner_of_uid.setdefault(uid, (i, loc))
                if owner != i:
                    add(loc + ("uid",), f"uid {uid!r} is already used by {format_path(owner_loc)}",
                        hint="every model needs its own uid: it is the name RAGFlow uses")
            engine = entry.get("engine")
            if role not in MODEL_TYPE_OF_ROLE or not isinstance(engine, str):
                continue
            model_type = MODEL_TYPE_OF_ROLE[role]
            if canonical_engine(model_type, engine) is None:
                allowed = ", ".join(ENGINES[model_type])
                spellings = {e.lower(): e for e in ENGINES[model_type]}
                spellings.update({alias: alias for alias in ENGINE_ALIASES.get(model_type, {})})
                close = difflib.get_close_matches(engine.lower(), list(spellings), n=1)
                suggestion = f"did you mean `{spellings[close[0]]}`? " if close else ""
                add(loc + ("engine",), f"engine {engine!r} is not an engine for {role} models",
                    hint=f"{suggestion}allowed for {role}: {allowed}")
        if role == "chat" and spec.get("engine") is None:
            add(("models", i, "engine"), "chat models need an engine",
                hint=f"Xinference requires model_engine for LLMs; allowed: {', '.join(ENGINES['LLM'])}")
        # Online, a left-out source is taken from the catalog (catalog.py says when it cannot be).
        if offline and spec.get("source") is None and spec.get("local_path") is None:
            add(("models", i, "local_path"), "with download.hub: none a model needs local_path or source",
                hint="source names the folder under models_dir that already holds the weights")
    roles = data.get("roles") if isinstance(data.get("roles"), dict) else {}
    if models:
        for role in ROLES:
            want = roles.get(role, 1)
            if isinstance(want, int) and counts[role] != want:
                have = counts[role]
                add(("models",), f"expected {want} {role} model{'s' if want != 1 else ''}, found {have}",
                    hint=f"add or remove a model with role: {role}, or set roles.{role}: {have}")
    _check_server_access(data.get("server"), add)
    _check_cluster(data.get("server"), add)
    _check_ragflow(data.get("ragflow"), add)
    return problems


def _check_ragflow(ragflow: Any, add) -> None:
    """One way to sign in to RAGFlow, and only with a RAGFlow to sign in to."""
    if not isinstance(ragflow, dict):
        return
    if ragflow.get("url") is None:
        for key in ("api_token_env", "email", "password_env", "instance"):
            if ragflow.get(key) is not None:
                add(("ragflow", "url"), f"ragflow.{key} needs ragflow.url: the RAGFlow to register the stack in",
                    hint="add url: http://HOST:9380 (RAGFlow's API server), or remove the other ragflow keys")
                return
    if ragflow.get("email") is not None and ragflow.get("password_env") is None:
        add(("ragflow", "password_env"), "ragflow.email needs password_env (the NAME of the variable holding the password)",
            hint="e.g. password_env: RAGFLOW_PASSWORD, or sign in with api_token_env instead")
    if ragflow.get("password_env") is not None and ragflow.get("email") is None:
        add(("ragflow", "email"), "ragflow.password_env needs email (the RAGFlow user to sign in as)")
    if ragflow.get("api_token_env") is not None and ragflow.get("email") is not None:
        add(("ragflow", "api_token_env"), "give either api_token_env or email + password_env, not both",
            hint="an API token (RAGFlow: user settings -> API) is the simpler one")


def _check_server_access(server: Any, add) -> None:
    """An open API (auth off) only on loopback unless the user says so; key variables only for an endpoint."""
    if not isinstance(server, dict):
        return
    host = server.get("host", "127.0.0.1")
    if _as_bool(server.get("auth", True)) is False and isinstance(host, str) and not netaddr.is_loopback(host) \
            and _as_bool(server.get("allow_open", False)) is not True and not server.get("endpoint"):
        add(("server", "auth"), f"server.auth: false with server.host {host} opens the API to the network: anyone who "
            f"can reach the port can launch and delete models",
            hint="keep server.auth: true (the default), listen on 127.0.0.1, or add allow_open: true to accept it")
    env = server.get("env")
    if isinstance(env, dict) and "XINFERENCE_AUTH_ADVANCED" in env:
        add(("server", "env", "XINFERENCE_AUTH_ADVANCED"), "authentication is set with server.auth, not server.env",
            hint="provision must know whether the server wants credentials: write server.auth: true or false")
    if not server.get("endpoint"):
        for key in ("api_key_env", "admin_password_env"):
            if server.get(key) is not None:
                add(("server", key), f"{key} applies only to a server given by server.endpoint",
                    hint="for a server it starts, provision creates the admin and the API key itself")


CLUSTER_KEYS = ("workers", "supervisor_port", "worker_port")


def _check_cluster(server: Any, add) -> None:
    """Cluster keys only with mode: cluster, never beside server.endpoint; every port its own and valid."""
    if not isinstance(server, dict):
        return
    mode = server.get("mode", "local")
    if mode != "cluster":
        for key in CLUSTER_KEYS:
            if key in server:
                add(("server", key), f"server.{key} applies only to server.mode: cluster",
                    hint="add `mode: cluster` under server to start a supervisor and workers, or remove the key")
        return
    if server.get("endpoint"):
        add(("server", "mode"), "server.mode: cluster starts a cluster on this machine, server.endpoint uses one "
            "that runs already: give one of them",
            hint="for a remote cluster keep server.endpoint and remove mode (models[].worker_ip still places models)")
        return

    def number(key: str, default: int) -> int | None:
        value = server.get(key)
        if value is None:
            return default
        return value if isinstance(value, int) and not isinstance(value, bool) else None  # else: a type error

    port, workers = number("port", 9997), number("workers", 1)
    if port is None or workers is None or workers < 1:
        return
    supervisor, first = number("supervisor_port", port + 1), number("worker_port", port + 2)
    if supervisor is None or first is None:
        return
    worker_ports = range(first, first + workers)
    span = f"{first}" if workers == 1 else f"{first}-{first + workers - 1}"
    if worker_ports[-1] > 65535 or supervisor > 65535:
        add(("server", "worker_port" if worker_ports[-1] > 65535 else "supervisor_port"),
            f"the cluster's ports run past 65535 (supervisor {supervisor}, workers {span})",
            hint="set server.supervisor_port and server.worker_port to free ports below 65536")
    elif supervisor == port or supervisor in worker_ports or port in worker_ports:
        add(("server", "supervisor_port" if supervisor == port else "worker_port"),
            f"the cluster's ports overlap: server.port {port}, supervisor_port {supervisor}, workers on {span}",
            hint="every process needs a port of its own: worker i listens on worker_port + i - 1")

