"""The declarative manifest: pydantic models, YAML loading with line numbers, normalisation, JSON Schema.

`load(path)` returns a `Manifest` or raises one `ManifestError` listing every problem found, each with
the file, the line where known, the field path (`models[1].fallbacks[0].engine`) and what is allowed.
`Manifest.candidates(i)` resolves a model's fallback chain into fully specified, normalised `Candidate`s.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ManifestError, Problem

ROLES = ("chat", "embedding", "rerank")
MODEL_TYPE_OF_ROLE = {"chat": "LLM", "embedding": "embedding", "rerank": "rerank"}

# Canonical engine spellings per Xinference model type (reference/xinference.md). Lookup is
# case-insensitive; aliases cover what users write from habit.
ENGINES = {
    "LLM": ["vLLM", "SGLang", "Transformers", "llama.cpp", "MLX", "LMDEPLOY"],
    "embedding": ["sentence_transformers", "flag", "vllm", "llama.cpp"],
    "rerank": ["sentence_transformers", "vllm", "llama.cpp"],
}
# Xinference has no `transformers` engine for embedding/rerank: the sentence_transformers engine is the
# transformers-based one, and asking for `transformers` fails with "cannot be run on engine transformers".
ENGINE_ALIASES = {
    "embedding": {"transformers": "sentence_transformers", "sentence-transformers": "sentence_transformers"},
    "rerank": {"transformers": "sentence_transformers", "sentence-transformers": "sentence_transformers"},
    "LLM": {"llamacpp": "llama.cpp", "llama_cpp": "llama.cpp"},
}
GPU_ONLY_ENGINES = {"vllm", "sglang", "lmdeploy"}

UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REPLICA_SUFFIX_RE = re.compile(r"-rep\d+$")
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def canonical_engine(model_type: str, engine: str) -> str | None:
    """The engine name Xinference expects, or None when the model type has no such engine."""
    key = engine.strip().lower()
    alias = ENGINE_ALIASES.get(model_type, {}).get(key)
    if alias:
        return alias
    for known in ENGINES[model_type]:
        if known.lower() == key:
            return known
    return None


def size_to_wire(size: float | int | str | None) -> int | str | None:
    """Xinference size ids: integers stay integers, 0.5 becomes "0_5"."""
    if size is None:
        return None
    if isinstance(size, str):
        size = float(size.replace("_", "."))
    if float(size).is_integer():
        return int(size)
    return format(float(size), "g").replace(".", "_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class _CandidateFields(_Strict):
    """Fields a model entry and each of its fallbacks share; a fallback leaves out what it inherits."""

    uid: str | None = Field(
        None,
        description="Xinference model UID, the name RAGFlow uses for the model. 1-100 characters "
        "(letters, digits, '.', '_', '-'), not ending in -rep<N>.",
    )
    name: str | None = Field(
        None,
        description="Xinference built-in model name (e.g. Qwen3-Instruct, bge-m3, bge-reranker-v2-m3); "
        "decides the prompt template and architecture Xinference assumes.",
    )
    source: str | None = Field(
        None, description="Hub model id 'owner/name' the weights are downloaded from (e.g. BAAI/bge-m3)."
    )
    revision: str | None = Field(None, description="Hub revision (branch or tag); default master.")
    engine: str | None = Field(
        None,
        description="Inference engine. chat: vLLM, SGLang, Transformers, llama.cpp, MLX, LMDEPLOY; "
        "embedding: sentence_transformers, flag, vllm, llama.cpp; rerank: sentence_transformers, vllm, "
        "llama.cpp. Case-insensitive; 'transformers' on embedding/rerank means sentence_transformers.",
    )
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] | None = Field(
        None,
        description="Share of the GPU's total memory vLLM may reserve, in (0, 1], or 'auto': the largest "
        "share that fits the GPU's free memory with a safety margin. Always sent for vLLM candidates "
        "(vLLM's own default, 0.9, fails on a shared card).",
    )
    size_in_billions: float | str | None = Field(
        None, description="Model size in billions of parameters (e.g. 4, 0.5); 0.5 is sent as '0_5'."
    )
    format: str | None = Field(None, description="Model format, e.g. pytorch, gptq, awq, ggufv2.")
    quantization: str | None = Field(None, description="Quantization, e.g. none, Int4, q4_k_m.")
    n_gpu: int | Literal["auto"] | None = Field(
        None,
        description="GPUs per replica: a number, 'auto', or null for CPU. Left out: 'auto' for vLLM/"
        "SGLang/LMDEPLOY, CPU for the others.",
    )
    gpu_idx: int | list[int] | None = Field(None, description="GPU index or indices to place the model on.")
    worker_ip: str | None = Field(None, description="Cluster worker address (ip or ip:port) to place it on.")
    replica: int | None = Field(None, ge=1, description="Number of replicas; default 1.")
    local_path: str | None = Field(
        None,
        description="A folder that already holds the weights; nothing is downloaded. Relative paths "
        "resolve against the manifest's folder.",
    )
    options: dict[str, Any] | None = Field(
        None, description="Extra launch arguments passed to the engine as-is (e.g. max_model_len: 8192)."
    )
    launch_timeout: float | None = Field(
        None, gt=0, description="Seconds to wait for this candidate to become READY; default 900."
    )

    @field_validator("n_gpu", mode="before")
    @classmethod
    def _n_gpu(cls, value: Any) -> Any:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"n_gpu must be a number of GPUs (0 or more), 'auto', or null for CPU (got {value!r})")

    @field_validator("gpu_memory_utilization", mode="before")
    @classmethod
    def _utilization(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or (number and 0 < value <= 1):
            return value
        raise ValueError(f"invalid gpu_memory_utilization {value!r}; allowed: 0 < gpu_memory_utilization <= 1, or auto")

    @field_validator("gpu_idx", mode="before")
    @classmethod
    def _gpu_idx(cls, value: Any) -> Any:
        def index(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0
        if value is None or index(value) or (isinstance(value, list) and value and all(index(v) for v in value)):
            return value
        raise ValueError(f"gpu_idx must be a GPU index or a list of them, such as 0 or [0, 1] (got {value!r})")

    @field_validator("size_in_billions", mode="before")
    @classmethod
    def _size_type(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value
        raise ValueError(f"size_in_billions must be a number such as 4 or 0.5 (got {value!r})")

    @field_validator("size_in_billions")
    @classmethod
    def _size(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str):
            try:
                float(value.replace("_", "."))
            except ValueError:
                raise ValueError("size_in_billions must be a number such as 4 or 0.5") from None
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError("size_in_billions must be greater than 0")
        return value

    @field_validator("uid")
    @classmethod
    def _uid(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not 1 <= len(value) <= 100:
            raise ValueError("uid must be 1-100 characters long")
        if not UID_RE.match(value) or ".." in value:
            raise ValueError("uid may hold only letters, digits, '.', '_' and '-' and must start with a letter or digit")
        if REPLICA_SUFFIX_RE.search(value):
            raise ValueError("uid must not end in -rep<N>: Xinference reserves that suffix for replicas")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and (not SOURCE_RE.match(value) or ".." in value):
            raise ValueError("source must be a hub model id 'owner/name' (no '..', no leading '/', no extra '/')")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (not NAME_RE.match(value) or ".." in value):
            raise ValueError("name must be a Xinference model name (letters, digits, '.', '_', '-')")
        return value


class FallbackSpec(_CandidateFields):
    """A fallback candidate: every field left out is inherited from the entry above it."""


class ModelSpec(_CandidateFields):
    role: Literal["chat", "embedding", "rerank"] = Field(
        ..., description="What the model is for in RAGFlow: chat, embedding or rerank."
    )
    uid: str = Field(..., description=_CandidateFields.model_fields["uid"].description)
    name: str = Field(..., description=_CandidateFields.model_fields["name"].description)
    fallbacks: list[FallbackSpec] = Field(
        default_factory=list,
        description="Candidates tried in order when the one above fails; unspecified fields are "
        "inherited from the entry above.",
    )


class ServerSpec(_Strict):
    host: str = Field(
        "127.0.0.1", description="Address xinference-local listens on; 0.0.0.0 only when RAGFlow runs in Docker."
    )
    port: int = Field(9997, ge=1, le=65535, description="Port of the Xinference REST API.")
    home: str = Field(
        ".provision/xinference",
        description="XINFERENCE_HOME; relative paths resolve against the manifest's folder.",
    )
    virtual_env: bool = Field(
        False,
        description="Xinference's per-model virtualenvs (XINFERENCE_ENABLE_VIRTUAL_ENV / enable_virtual_env); "
        "off by default because they re-install packages at launch.",
    )
    endpoint: str | None = Field(
        None,
        description="URL of an existing server or cluster supervisor; provision neither starts nor stops it.",
    )
    start_timeout: float = Field(300, gt=0, description="Seconds to wait for a started server to answer.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the server process."
    )
    auth: bool = Field(
        True,
        description="Authentication on the server provision starts: first-run setup, an admin with a generated "
        "password and an API key for RAGFlow, kept in the state folder (0600). false turns it off "
        "(XINFERENCE_AUTH_ADVANCED=0) and needs allow_open: true with a non-loopback host.",
    )
    allow_open: bool = Field(
        False,
        description="Accept server.auth: false on a non-loopback server.host: anyone who can reach the port "
        "can then launch and delete models.",
    )
    api_key_env: str | None = Field(
        None,
        description="With server.endpoint: NAME of the environment variable holding an API key of that server "
        "(verify and RAGFlow use it).",
    )
    admin_user: str = Field(
        "admin", description="With server.endpoint: the admin account provision logs in as to launch and terminate models."
    )
    admin_password_env: str | None = Field(
        None,
        description="With server.endpoint: NAME of the environment variable holding admin_user's password "
        "(Xinference API keys cannot launch or terminate models).",
    )
    mode: Literal["local", "cluster"] = Field(
        "local",
        description="local: one xinference-local. cluster: an xinference-supervisor on host:port and server.workers "
        "xinference-workers beside it on this machine, each its own process; place models with models[].worker_ip "
        "(a cluster that runs elsewhere is server.endpoint).",
    )
    workers: int = Field(1, ge=1, le=64, description="With mode: cluster: how many workers to start.")
    supervisor_port: int | None = Field(
        None, ge=1, le=65535,
        description="With mode: cluster: the supervisor's internal (actor) port the workers join; default server.port + 1.",
    )
    worker_port: int | None = Field(
        None, ge=1, le=65535,
        description="With mode: cluster: worker 1 listens on worker_port, worker 2 on worker_port + 1, ...; a "
        "model is placed on one with worker_ip: <host>:<its port>. Default server.port + 2.",
    )

    @property
    def cluster_supervisor_port(self) -> int:
        return self.supervisor_port or self.port + 1

    @property
    def worker_host(self) -> str:
        """The address the workers listen on: server.host, loopback for a wildcard (they all run here)."""
        return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    @property
    def worker_addresses(self) -> list[str]:
        """What mode: cluster starts, as the supervisor names the workers (and worker_ip names them)."""
        if self.mode != "cluster":
            return []
        first = self.worker_port or self.port + 2
        return [f"{self.worker_host}:{first + i}" for i in range(self.workers)]

    @field_validator("api_key_env", "admin_password_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError("this is the NAME of an environment variable (such as XINFERENCE_API_KEY), not the secret")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("endpoint must be an http:// or https:// URL such as http://10.0.0.5:9997")
        return value.rstrip("/") if value else value


class DownloadSpec(_Strict):
    hub: Literal["modelscope", "huggingface", "none"] = Field(
        "modelscope", description="Where weights come from: modelscope, huggingface, or none (local folders only)."
    )
    endpoint: str | None = Field(None, description="Another hub address, e.g. an intranet mirror.")
    token_env: str = Field(
        "MODELSCOPE_API_TOKEN", description="Name of the environment variable that holds the hub token."
    )
    models_dir: str = Field(
        "models", description="Folder the weights are downloaded into; relative to the manifest's folder."
    )
    parallel: int = Field(3, ge=1, le=16, description="Models downloaded at the same time.")

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError("token_env is the NAME of an environment variable, not the token itself")
        return value


class RagflowSpec(_Strict):
    docker: bool = Field(False, description="RAGFlow runs in Docker and reaches the server as docker_host.")
    docker_host: str = Field(
        "host.docker.internal", description="Host name RAGFlow's container uses to reach this machine."
    )


class Manifest(_Strict):
    version: Literal[1] = Field(..., description="Manifest format version; 1.")
    name: str = Field(..., description="Name of this stack (letters, digits, '.', '_', '-').")
    server: ServerSpec = Field(default_factory=ServerSpec, description="The Xinference server.")
    download: DownloadSpec = Field(default_factory=DownloadSpec, description="Where and how weights are fetched.")
    models: list[ModelSpec] = Field(..., min_length=1, description="The models to serve, one entry per model.")
    roles: dict[Literal["chat", "embedding", "rerank"], Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: {role: 1 for role in ROLES},
        description="How many models of each role the stack must have; default exactly one of each. "
        "Set a role to 0 to leave it out.",
    )
    ragflow: RagflowSpec = Field(default_factory=RagflowSpec, description="How RAGFlow reaches the server.")

    @field_validator("name")
    @classmethod
    def _stack_name(cls, value: str) -> str:
        if not NAME_RE.match(value) or ".." in value or len(value) > 64:
            raise ValueError("name may hold only letters, digits, '.', '_' and '-' (at most 64)")
        return value

    # Filled in by load(); not part of the schema.
    _file: str = ""
    _base_dir: Path = Path(".")

    @property
    def file(self) -> str:
        return self._file

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve_path(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self._base_dir / path).resolve()

    @property
    def models_dir(self) -> Path:
        return self.resolve_path(self.download.models_dir)

    @property
    def server_home(self) -> Path:
        return self.resolve_path(self.server.home)

    def candidates(self, index: int) -> list[Candidate]:
        """The model's chain, primary first, each fallback filled in from the entry above it."""
        spec = self.models[index]
        fields = [f for f in _CandidateFields.model_fields]
        current = {f: getattr(spec, f) for f in fields}
        chain = [self._candidate(spec.role, index, 0, current)]
        for position, fallback in enumerate(spec.fallbacks, start=1):
            given = fallback.model_dump(exclude_unset=True)
            if "source" in given and "local_path" not in given:
                given["local_path"] = None  # another model's weights are not in the old folder
            current = {**current, **given}
            chain.append(self._candidate(spec.role, index, position, current))
        return chain

    def _candidate(self, role: str, model_index: int, position: int, values: dict) -> Candidate:
        model_type = MODEL_TYPE_OF_ROLE[role]
        engine = values["engine"] or ("sentence_transformers" if model_type != "LLM" else "")
        engine = canonical_engine(model_type, engine) or engine
        n_gpu = values["n_gpu"]
        if "n_gpu" not in self._explicit_keys(model_index, position) and engine.lower() in GPU_ONLY_ENGINES:
            n_gpu = "auto"
        local = values["local_path"]
        if local:
            folder = self.resolve_path(local)
        elif values["source"]:
            folder = self.models_dir / values["source"]
        else:
            folder = None
        return Candidate(
            role=role,
            model_type=model_type,
            model_index=model_index,
            position=position,
            uid=values["uid"],
            name=values["name"],
            source=values["source"],
            revision=values["revision"],
            engine=engine,
            gpu_memory_utilization=values["gpu_memory_utilization"],
            size_in_billions=size_to_wire(values["size_in_billions"]),
            format=values["format"],
            quantization=values["quantization"],
            n_gpu=n_gpu,
            gpu_idx=values["gpu_idx"],
            worker_ip=values["worker_ip"],
            replica=values["replica"] or 1,
            folder=folder,
            downloadable=bool(values["source"]) and not local and self.download.hub != "none",
            options=dict(values["options"] or {}),
            launch_timeout=values["launch_timeout"] or 900.0,
            virtual_env=self.server.virtual_env,
        )

    def _explicit_keys(self, model_index: int, position: int) -> set[str]:
        """Keys the user wrote on this entry or an entry above it in the chain."""
        spec = self.models[model_index]
        keys = set(spec.model_fields_set)
        for fallback in spec.fallbacks[:position]:
            keys |= fallback.model_fields_set
        return keys


@dataclass(frozen=True)
class Candidate:
    """One fully specified, normalised launch candidate of a model's fallback chain."""

    role: str
    model_type: str
    model_index: int
    position: int  # 0 = primary, 1.. = fallbacks[position - 1]
    uid: str
    name: str
    source: str | None
    revision: str | None
    engine: str
    gpu_memory_utilization: float | str | None  # a share in (0, 1], "auto" (plan.launchable resolves it), None
    size_in_billions: int | str | None
    format: str | None
    quantization: str | None
    n_gpu: int | str | None
    gpu_idx: int | list[int] | None
    worker_ip: str | None
    replica: int
    folder: Path | None  # where the weights are (or will be) on disk
    downloadable: bool
    options: dict[str, Any] = field(default_factory=dict)
    launch_timeout: float = 900.0
    virtual_env: bool = False

    @property
    def label(self) -> str:
        return "primary" if self.position == 0 else f"fallback {self.position}"

    @property
    def path(self) -> str:
        base = f"models[{self.model_index}]"
        return base if self.position == 0 else f"{base}.fallbacks[{self.position - 1}]"

    @property
    def is_vllm(self) -> bool:
        return self.engine.lower() == "vllm"

    @property
    def on_gpu(self) -> bool:
        return self.n_gpu is not None

    def describe(self) -> str:
        size = f" {self.size_in_billions}B" if self.size_in_billions is not None else ""
        return f"{self.name}{size} on {self.engine}"


# --------------------------------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike, *, environ: dict[str, str] | None = None) -> Manifest:
    """Read, interpolate, validate and check a manifest; raise ManifestError with every problem."""
    file = str(path)
    environ = dict(os.environ) if environ is None else environ
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(file, [Problem("", "file not found", hint="check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(file, [Problem("", f"cannot read the file: {exc}")]) from exc
    return parse(text, file=file, base_dir=Path(file).resolve().parent, environ=environ)


def parse(text: str, *, file: str = "<manifest>", base_dir: Path | None = None, environ: dict | None = None) -> Manifest:
    environ = dict(os.environ) if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and start.line + 1 != line:
            reason += f" ({context} that starts on line {start.line + 1})"  # e.g. an unclosed quote
        raise ManifestError(file, [Problem("", f"YAML syntax error: {reason}", line=line)]) from exc
    lines = _line_index(root)
    if data is None:
        raise ManifestError(
            file, [Problem("", "the file is empty", hint="start from manifests/cpu-small.yml")]
        )
    if not isinstance(data, dict):
        raise ManifestError(
            file,
            [Problem("", f"the manifest must be a mapping of keys (version, name, models, ...), not a {_kind(data)}", line=1)],
        )
    problems: list[Problem] = _underscore_numbers(root) + _duplicate_keys(root)
    data = _interpolate(data, (), environ, problems, lines)
    manifest = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_from_validation(exc, lines))
    problems.extend(check(data, lines))
    if problems or manifest is None:
        problems.sort(key=lambda p: (p.line or 0))
        raise ManifestError(file, _dedupe(problems))
    manifest._file = file
    manifest._base_dir = base_dir or Path.cwd()
    return manifest


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def _line_index(node: yaml.Node | None, path: tuple = (), index: dict | None = None) -> dict[tuple, int]:
    """Map each field path (as a tuple of keys and list indices) to its 1-based line in the file."""
    index = {} if index is None else index
    if node is None:
        return index
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[path + (key,)] = key_node.start_mark.line + 1
            _line_index(value_node, path + (key,), index)
            index[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), index)
    return index


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def format_path(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _duplicate_keys(node: yaml.Node | None, path: tuple = ()) -> list[Problem]:
    """A key written twice in one mapping: YAML keeps the last silently; a manifest should not."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line:
                problems.append(Problem(format_path(path + (key,)), f"key `{key}` appears twice", line=line,
                                        hint=f"first on line {first_line[key]}; the last one would win silently"))
            first_line.setdefault(key, line)
            problems += _duplicate_keys(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, path + (i,))
    return problems


def _underscore_numbers(node: yaml.Node, path: tuple = ()) -> list[Problem]:
    """size_in_billions: 1_8 is Xinference's id for 1.8, but YAML 1.1 reads a plain 1_8 as 18 (0_5 as 5)."""
    if isinstance(node, yaml.MappingNode):
        return [p for key, value in node.value for p in _underscore_numbers(value, path + (key.value,))]
    if isinstance(node, yaml.SequenceNode):
        return [p for i, item in enumerate(node.value) for p in _underscore_numbers(item, path + (i,))]
    if path[-1:] == ("size_in_billions",) and node.tag == "tag:yaml.org,2002:int" and "_" in node.value:
        return [Problem(format_path(path), f"YAML reads {node.value} as the number {yaml.safe_load(node.value)}",
                        line=node.start_mark.line + 1, hint=f"write {node.value.replace('_', '.')} or quote it: '{node.value}'")]
    return []


def _interpolate(value: Any, loc: tuple, environ: dict, problems: list[Problem], lines: dict) -> Any:
    """Expand ${VAR} and ${VAR:-default} in string values; $$ is a literal $."""
    if isinstance(value, dict):
        return {k: _interpolate(v, loc + (k,), environ, problems, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, loc + (i,), environ, problems, lines) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def expand(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            Problem(
                format_path(loc),
                f"environment variable {name} is not set",
                line=_line_of(lines, loc),
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )
        )
        return ""

    expanded = ENV_VAR_RE.sub(expand, value)
    # `key: ${VAR:-}` means "unset unless the environment says otherwise", not an empty string.
    if expanded == "" and ENV_VAR_RE.fullmatch(value.strip()):
        return None
    return expanded


_UNION_TAG = re.compile(r"^(int|float|str|bool|none|is-instance\[.*\]|.*\[.*\]|function-.*)$")

_MODELS_BY_FIELD = {
    (): Manifest,
    ("server",): ServerSpec,
    ("download",): DownloadSpec,
    ("ragflow",): RagflowSpec,
    ("models", 0): ModelSpec,
    ("models", 0, "fallbacks", 0): FallbackSpec,
}


def _model_at(loc: tuple) -> type[BaseModel] | None:
    shape = tuple(0 if isinstance(p, int) else p for p in loc)
    return _MODELS_BY_FIELD.get(shape)


def _problems_from_validation(exc: ValidationError, lines: dict) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p) and p not in _all_fields()))
        kind = err["type"]
        path = format_path(loc)
        line = _line_of(lines, loc)
        hint = None
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            message = f"unknown key `{loc[-1]}`"
            hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required field is missing"
            parent = _model_at(loc[:-1])
            described = parent.model_fields[str(loc[-1])].description if parent and str(loc[-1]) in (parent.model_fields) else None
            hint = described
        elif kind == "literal_error":
            message = f"invalid value {err['input']!r}"
            hint = "allowed: " + err["ctx"]["expected"] if "ctx" in err else None
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {err['input']!r})"
            hint = _range_hint(loc)
        problems.append(Problem(path, message, line=line, hint=hint))
    return problems


def _range_hint(loc: tuple) -> str | None:
    """'allowed: 0 < gpu_memory_utilization <= 1' for a field with numeric bounds, else None."""
    parent = _model_at(loc[:-1]) if loc else None
    info = parent.model_fields.get(str(loc[-1])) if parent else None
    if info is None:
        return None
    bounds = {a: getattr(b, a) for b in info.metadata for a in ("gt", "ge", "lt", "le") if getattr(b, a, None) is not None}
    low = next(((bounds[a], op) for a, op in (("gt", "<"), ("ge", "<=")) if a in bounds), None)
    high = next(((bounds[a], op) for a, op in (("lt", "<"), ("le", "<=")) if a in bounds), None)
    name = loc[-1]
    if low and high:
        return f"allowed: {low[0]} {low[1]} {name} {high[1]} {high[0]}"
    if low:
        return f"allowed: {name} {low[1].replace('<', '>')} {low[0]}"
    return f"allowed: {name} {high[1]} {high[0]}" if high else None


def _all_fields() -> set[str]:
    names: set[str] = set()
    for model in _MODELS_BY_FIELD.values():
        names |= set(model.model_fields)
    return names


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per path: union types report each member's failure; keep the first message."""
    seen: dict[tuple[str, str], Problem] = {}
    by_path: dict[str, Problem] = {}
    for p in problems:
        if p.path in by_path and p.path:
            continue
        by_path[p.path] = p
        seen[(p.path, p.message)] = p
    return list(seen.values())


# --------------------------------------------------------------------------------------------------
# Semantic checks. They read the raw (interpolated) data, so they run even when the structure has
# errors too, and the user sees every problem at once.


def check(data: dict, lines: dict | None = None) -> list[Problem]:
    lines = lines or {}
    problems: list[Problem] = []

    def add(loc: tuple, message: str, hint: str | None = None) -> None:
        problems.append(Problem(format_path(loc), message, line=_line_of(lines, loc), hint=hint))

    models = data.get("models")
    models = models if isinstance(models, list) else []
    download = data.get("download") if isinstance(data.get("download"), dict) else {}
    offline = download.get("hub") == "none"
    owner_of_uid: dict[str, tuple[int, tuple]] = {}  # uid -> (model index, entry that claimed it first)
    counts = {role: 0 for role in ROLES}
    for i, spec in enumerate(models):
        if not isinstance(spec, dict):
            continue
        role = spec.get("role")
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
        if spec.get("source") is None and spec.get("local_path") is None:
            if offline:
                add(("models", i, "local_path"), "with download.hub: none a model needs local_path or source",
                    hint="source names the folder under models_dir that already holds the weights")
            else:
                add(("models", i, "source"), "a model needs source (a hub id) or local_path",
                    hint="e.g. source: BAAI/bge-m3")
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
    return problems


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: only this machine can connect."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_server_access(server: Any, add) -> None:
    """An open API (auth off) only on loopback unless the user says so; key variables only for an endpoint."""
    if not isinstance(server, dict):
        return
    host = server.get("host", "127.0.0.1")
    if server.get("auth") is False and isinstance(host, str) and not is_loopback_host(host) \
            and server.get("allow_open") is not True and not server.get("endpoint"):
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


def json_schema() -> dict:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "provision manifest"
    schema["description"] = "One YAML manifest -> a running, verified Xinference model stack for RAGFlow."
    return schema
