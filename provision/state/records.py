"""What the state records: the server provision started or targets, and each model with every attempt of
its chain. Read back with every field's type checked, so a damaged file says which field is wrong.
"""


from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..redact import secret_values

STATE_VERSION = 1


@dataclass
class WorkerRecord:
    """One xinference-worker of a cluster provision started; identity fields as ServerRecord's."""

    address: str  # host:port, as the supervisor and worker_ip name it
    pid: int | None = None
    pgid: int | None = None
    cmdline: list[str] = field(default_factory=list)
    create_time: float | None = None
    start_ticks: int | None = None  # written by provision 0.1 instead of create_time; still read
    log: str | None = None
    started_at: float | None = None


@dataclass
class ServerRecord:
    url: str  # base of the REST API, e.g. http://127.0.0.1:9997
    managed: bool  # True: provision started it and `down` stops it
    host: str = ""
    port: int = 0
    pid: int | None = None
    pgid: int | None = None
    cmdline: list[str] = field(default_factory=list)
    create_time: float | None = None  # with the cmdline, the PID's identity (runtime/procs.py)
    start_ticks: int | None = None  # written by provision 0.1 instead of create_time; still read
    log: str | None = None
    home: str | None = None
    started_at: float | None = None
    # Where the server's secrets come from; never the secrets themselves (see auth/).
    auth: bool = False  # managed: provision set up its authentication; the key is in credentials.json
    api_key_env: str | None = None  # external: the variable holding an API key (server.api_key_env)
    admin_user: str | None = None  # external: the admin provision logs in as (server.admin_user)
    admin_password_env: str | None = None  # external: the variable holding that admin's password
    # server.mode: cluster: pid/pgid/cmdline/log above are the supervisor's; `down` stops the workers first.
    mode: str = "local"  # local | cluster
    supervisor_port: int | None = None  # cluster: the supervisor's internal (actor) port
    workers: list[WorkerRecord] = field(default_factory=list)


@dataclass
class AttemptRecord:
    candidate: str  # "primary" / "fallback 1"
    name: str
    engine: str
    outcome: str  # ready | failed | skipped
    reason: str = ""
    kind: str = ""  # failure class (launch.FailureKind value) or ""
    seconds: float = 0.0


@dataclass
class ModelRecord:
    role: str
    uid: str
    model_type: str
    status: str  # running | failed | terminated
    candidate: str | None = None  # label of the winning candidate
    name: str | None = None
    engine: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # the POST /v1/models body that launched it
    chain_key: str = ""  # fingerprint of the manifest entry it was launched from (plan.chain_key)
    folder: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    error: str | None = None
    context_length: int | None = None  # the max tokens RAGFlow is told (LLM: context; embedding/rerank: input)
    dimensions: int | None = None
    numbers_from: dict[str, str] = field(default_factory=dict)  # "context_length"/"dimensions" -> where from
    launched_at: float | None = None
    ready_seconds: float | None = None


@dataclass
class State:
    manifest: str
    name: str
    server: ServerRecord | None = None
    models: list[ModelRecord] = field(default_factory=list)
    ragflow_docker: bool = False
    docker_host: str = "host.docker.internal"
    version: int = STATE_VERSION
    updated_at: float = 0.0

    def model(self, uid: str) -> ModelRecord | None:
        return next((m for m in self.models if m.uid == uid), None)

    def to_json(self) -> dict:
        """The state as it is written: a launch option whose name says it is a secret is not kept."""
        data = asdict(self)
        for model in data["models"]:
            model["payload"] = secret_values(model["payload"])
        return data

    @classmethod
    def from_json(cls, data: Any) -> State:
        """The state in a state.json document; ValueError naming the field when it is damaged."""
        if not isinstance(data, dict):
            raise ValueError(f"it is not a JSON object but {type(data).__name__}")
        for model in data.get("models") or [] if isinstance(data.get("models"), list) else []:
            if isinstance(model, dict) and "spec" in model:  # provision 0.1 called the launch payload `spec`
                model["payload"] = model.pop("spec")
        from pydantic import TypeAdapter, ValidationError  # only when a state is read: `--help` stays light

        try:
            state = TypeAdapter(cls).validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{_path(first['loc'])}: {first['msg']}") from None
        if state.server is not None:
            parts = urlsplit(state.server.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"server.url {state.server.url[:80]!r} is not an http:// or https:// URL")
        return state


def _path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text or "the document"


