"""The POST /v1/models body of one candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import Candidate

# Keys engine options may not override: the chain tracks the model by uid, and wait_ready in the body
# is an HTTP 500 ("got multiple values for keyword argument 'wait_ready'").
_RESERVED_OPTIONS = {"model_uid", "model_name", "model_type", "wait_ready"}


def launch_payload(candidate: Candidate, model_path: Path | None) -> dict[str, Any]:
    """The POST /v1/models body; None-valued optional keys are left out (n_gpu: null means CPU)."""
    payload: dict[str, Any] = {
        "model_uid": candidate.uid,
        "model_name": candidate.name,
        "model_type": candidate.model_type,
        "model_engine": candidate.engine or None,
        "model_format": candidate.format,
        "model_size_in_billions": candidate.size_in_billions,
        "quantization": candidate.quantization,
        "replica": candidate.replica,
        "gpu_idx": candidate.gpu_idx,
        "worker_ip": candidate.worker_ip,
        "model_path": str(model_path) if model_path is not None else None,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    payload["n_gpu"] = candidate.n_gpu  # always sent, null = CPU: left out, Xinference picks "auto"
    payload["enable_virtual_env"] = candidate.virtual_env  # always sent: the server's default is ON
    if candidate.is_vllm:
        payload["gpu_memory_utilization"] = candidate.gpu_share()[0]
    payload.update({k: v for k, v in candidate.options.items() if k not in _RESERVED_OPTIONS})
    return payload

