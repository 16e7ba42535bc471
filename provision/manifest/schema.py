"""The manifest's schema: pydantic models with `extra="forbid"` and a description on every field (the
descriptions become the published JSON Schema editors complete from).

Values are checked here one field at a time; what needs several fields at once is in checks.py, and the
translation of pydantic's errors into our problems in problems.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from ..engines import ROLES
from .candidates import resolve_chain

from .fields import (
    MODEL_NAME_RE,
    NAME_RE,
    REPLICA_SUFFIX_RE,
    SOURCE_RE,
    SYSTEM_FOLDERS,
    UID_RE,
    Number,
    Seconds,
    _Strict,
)
from .sections import DownloadSpec, RagflowSpec, ServerSpec

if TYPE_CHECKING:
    from .candidates import Candidate


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
    replica: Number | None = Field(None, ge=1, description="Number of replicas; default 1.")
    local_path: str | None = Field(
        None,
        description="A folder that already holds the weights; nothing is downloaded. Relative paths "
        "resolve against the manifest's folder.",
    )
    options: dict[str, Any] | None = Field(
        None, description="Extra launch arguments passed to the engine as-is (e.g. max_model_len: 8192)."
    )
    launch_timeout: Seconds | None = Field(
        None, gt=0, description="Seconds to wait for this candidate to become READY; default 900."
    )
    accept_weights_mismatch: bool | None = Field(
        None,
        description="Launch even when the weights' config.json contradicts the catalog entry of `name` (another "
        "embedding size, fewer positions, another architecture); by default such a candidate is not launched.",
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
        if value is None:
            return value
        try:
            number = float(value.replace("_", ".")) if isinstance(value, str) else float(value)
        except (ValueError, OverflowError):
            raise ValueError("size_in_billions must be a number such as 4 or 0.5") from None
        if not math.isfinite(number):
            raise ValueError(f"size_in_billions must be a finite number such as 4 or 0.5 (got {value!r})")
        if number <= 0:
            raise ValueError("size_in_billions must be greater than 0")
        return value

    @field_validator("local_path")
    @classmethod
    def _local_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("local_path is empty: name the folder that holds the weights, or leave the key out")
        expanded = os.path.normpath(os.path.expanduser(value))
        if expanded in SYSTEM_FOLDERS or expanded == os.path.normpath(os.path.expanduser("~")):
            raise ValueError(f"local_path {value!r} is a system folder, not a model folder: name the folder that holds "
                             "the model's config.json and weights")
        return value

    @field_validator("uid")
    @classmethod
    def _uid(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not 1 <= len(value) <= 100:
            raise ValueError("uid must be 1-100 characters long")
        if not UID_RE.fullmatch(value) or ".." in value:
            raise ValueError("uid may hold only letters, digits, '.', '_' and '-' and must start with a letter or digit")
        if REPLICA_SUFFIX_RE.search(value):
            raise ValueError("uid must not end in -rep<N>: Xinference reserves that suffix for replicas")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and (not SOURCE_RE.fullmatch(value) or ".." in value):
            raise ValueError("source must be a hub model id 'owner/name' (no '..', no leading '/', no extra '/')")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (not MODEL_NAME_RE.fullmatch(value) or ".." in value):
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


class Manifest(_Strict):
    version: Literal[1] = Field(..., description="Manifest format version; 1.")
    name: str = Field(..., description="Name of this stack (letters, digits, '.', '_', '-').")
    server: ServerSpec = Field(default_factory=ServerSpec, description="The Xinference server.")
    download: DownloadSpec = Field(default_factory=DownloadSpec, description="Where and how weights are fetched.")
    models: list[ModelSpec] = Field(..., min_length=1, description="The models to serve, one entry per model.")
    roles: dict[Literal["chat", "embedding", "rerank"], Annotated[Number, Field(ge=0)]] = Field(
        default_factory=lambda: {role: 1 for role in ROLES},
        description="How many models of each role the stack must have; default exactly one of each. "
        "Set a role to 0 to leave it out.",
    )
    ragflow: RagflowSpec = Field(default_factory=RagflowSpec, description="How RAGFlow reaches the server.")

    @field_validator("name")
    @classmethod
    def _stack_name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value) or ".." in value or len(value) > 64:
            raise ValueError("name may hold only letters, digits, '.', '_' and '-' (at most 64)")
        return value

    # Filled in by load(); not part of the schema.
    _file: str = ""
    _base_dir: Path = Path(".")
    _raw: dict = {}  # the YAML as written, before ${VAR} expansion (lint.py reads it for secrets)
    _lines: dict = {}  # field path -> line, for problems found after loading (the catalog checks)
    _catalog: Any = None  # the catalog checked against (apply_catalog); left-out sources come from it

    @property
    def ragflow_instance(self) -> str:
        """The stack's Xinference instance in RAGFlow: ragflow.instance, else the stack's name."""
        return self.ragflow.instance or self.name

    @property
    def file(self) -> str:
        return self._file

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def raw(self) -> dict:
        return self._raw

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
        return resolve_chain(self, index)



def json_schema() -> dict:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "provision manifest"
    schema["description"] = "One YAML manifest -> a running, verified Xinference model stack for RAGFlow."
    return schema

