"""launch.classify over the REAL error texts recorded in reference/xinference.md and
reference/xinference-cpu-feasibility.md §4-5, with and without the worker's address prefix."""

from __future__ import annotations

import pytest

from provision.launch import FailureKind as K
from provision.launch import Scope, classify

PREFIX = "[address=127.0.0.1:46195, pid=21499] "

# (HTTP status as the docs give it, detail, expected kind, expected scope)
CASES = [
    # engine cannot run the model (feasibility §4: HTTP 400, also when the engine is missing)
    (400, "Model bge-reranker-v2-m3 cannot be run on engine transformers.", K.ENGINE_UNSUPPORTED, Scope.CANDIDATE),
    (400, "Model qwen2.5-instruct cannot be run on engine vllm.", K.ENGINE_UNSUPPORTED, Scope.CANDIDATE),
    (400, "Model bge-small-en-v1.5 cannot be run on engine llama.cpp.", K.ENGINE_UNSUPPORTED, Scope.CANDIDATE),
    (400, "Model qwen2.5-instruct cannot be run on engine llama.cpp, with format ggufv2, size 0_5 and "
          "quantization q4_0.", K.ENGINE_UNSUPPORTED, Scope.CANDIDATE),
    # engine not installed
    (500, "Failed to import module 'vllm'", K.ENGINE_MISSING, Scope.CANDIDATE),
    (500, "Failed to import module 'SentenceTransformer': Could not import module 'PreTrainedModel'. Are this "
          "object's requirements defined correctly?\n\nPlease make sure 'sentence-transformers' is installed. You "
          "can install it by `pip install sentence-transformers`\n", K.ENGINE_MISSING, Scope.CANDIDATE),
    (500, "Failed to import vLLM: No module named 'vllm'", K.ENGINE_MISSING, Scope.CANDIDATE),
    (500, "Failed to import xllamacpp: No module named 'xllamacpp'", K.ENGINE_MISSING, Scope.CANDIDATE),
    (500, "Engine llama.cpp library is not installed", K.ENGINE_MISSING, Scope.CANDIDATE),
    # model not found (name / size / format)
    (400, "Model not found, name: qwen2.5-instruct, format: pytorch, size: 999, quantization: none",
     K.MODEL_NOT_FOUND, Scope.CANDIDATE),
    (400, "Model not found, name: no-such-model, format: None, size: None, quantization: None",
     K.MODEL_NOT_FOUND, Scope.CANDIDATE),
    (400, "Rerank model bge-reranker-v9 not found, available models: ['bge-reranker-base', 'bge-reranker-v2-m3']",
     K.MODEL_NOT_FOUND, Scope.CANDIDATE),
    (400, "Embedding model bge-m9 not found", K.MODEL_NOT_FOUND, Scope.CANDIDATE),
    # bad path
    (400, "Invalid input. `model_path`: /scratch/models/nonexistent File or directory does not exist.",
     K.BAD_PATH, Scope.CANDIDATE),
    (500, "Error no file named model.safetensors, or pytorch_model.bin, found in directory /scratch/models/broken.",
     K.BAD_PATH, Scope.CANDIDATE),
    # out of memory: torch and vLLM
    (503, "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; 20.1 GiB already "
          "allocated)", K.OOM, Scope.CANDIDATE),
    (500, "Free memory on device (13.2/23.6 GiB) on startup is less than desired GPU memory utilization (0.9, "
          "21.24 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
     K.OOM, Scope.CANDIDATE),
    (500, "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
          "the engine.", K.OOM, Scope.CANDIDATE),
    (500, "To serve at least one request with the models's max seq len (32768), (4.00 GiB KV cache is needed, "
          "which is larger than the available KV cache memory (2.10 GiB). Based on the available memory, the "
          "estimated maximum model length is 17000. Try increasing `gpu_memory_utilization` or decreasing "
          "`max_model_len` when initializing the engine.", K.OOM, Scope.CANDIDATE),
    # no slot
    (503, "No available slot found for the model", K.NO_SLOT, Scope.CANDIDATE),
    (503, "No available worker found", K.NO_SLOT, Scope.CANDIDATE),
    (503, "Requested GPUs exceed the number of available devices", K.NO_SLOT, Scope.CANDIDATE),
    # uid in use
    (400, "Model is already in the model list, uid: emb1", K.UID_IN_USE, Scope.CANDIDATE),
    # the per-model virtualenv could not install the engine (the doc's shape and a real list repr)
    (500, "Command '[... uv pip install ...]' returned non-zero exit status 1.", K.VENV_FAILED, Scope.CANDIDATE),
    (500, "Command '['/home/x/.xinference/virtualenv/v4/bge-m3/vllm/3.11.7/bin/uv', 'pip', 'install', "
          "'vllm>=0.6.0']' returned non-zero exit status 1.", K.VENV_FAILED, Scope.CANDIDATE),
    # chain-scoped: auth refused, server gone
    (401, "Could not validate credentials", K.AUTH, Scope.CHAIN),
    (403, "Not enough permissions", K.AUTH, Scope.CHAIN),
    (None, "cannot reach the Xinference server at http://127.0.0.1:9997", K.SERVER_DIED, Scope.CHAIN),
    # unknown
    (400, "Invalid input. Please specify the `model_engine` field.", K.UNKNOWN, Scope.CANDIDATE),
    (500, "'str' object has no attribute 'get'", K.UNKNOWN, Scope.CANDIDATE),
    (500, "<xoscar.core.ActorRefMethod object at 0x7f3a> got multiple values for keyword argument 'wait_ready'",
     K.UNKNOWN, Scope.CANDIDATE),
    (500, "Engine core initialization failed. See root cause above. Failed core proc(s): {}", K.UNKNOWN,
     Scope.CANDIDATE),
]


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["bare", "worker-prefix"])
@pytest.mark.parametrize(("status", "detail", "kind", "scope"), CASES,
                         ids=[f"{c[2].value}-{i}" for i, c in enumerate(CASES)])
def test_classify_real_texts(status, detail, kind, scope, prefix):
    failure = classify(status, prefix + detail)
    assert failure.kind is kind
    assert failure.scope is scope
    assert "[address=" not in failure.reason and "pid=" not in failure.reason
    assert failure.reason
    assert len(failure.reason) <= 240
    assert "\n" not in failure.reason


def test_oom_hints_point_at_the_right_knob():
    free = classify(500, PREFIX + "Free memory on device (13.2/23.6 GiB) on startup is less than desired GPU "
                    "memory utilization (0.9, 21.24 GiB).")
    assert "lower gpu_memory_utilization" in free.hint
    kv = classify(500, "No available memory for the cache blocks. Try increasing `gpu_memory_utilization`.")
    assert "max_model_len" in kv.hint and "enforce_eager" in kv.hint
    torch_oom = classify(503, "CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "gpu_memory_utilization" in torch_oom.hint and "enforce_eager" in torch_oom.hint
    assert "hint: " in torch_oom.text()


def test_engine_unsupported_hint_mentions_missing_engine_ambiguity():
    failure = classify(400, PREFIX + "Model qwen2.5-instruct cannot be run on engine vllm.")
    assert failure.reason == "Model qwen2.5-instruct cannot be run on engine vllm."
    assert "/v1/engines" in failure.hint


VLLM_LOG_TAIL = """\
2026-11-22 10:00:01,123 xinference.core.worker 2231 INFO     Launch started model_uid=qwen-chat
(EngineCore_DP0 pid=2301) ERROR 11-22 10:00:40 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=2301) ERROR 11-22 10:00:40 [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=2301) ERROR 11-22 10:00:40 [core.py:708]   File "/v/vllm/v1/engine/core.py", line 699, in run
(EngineCore_DP0 pid=2301) ERROR 11-22 10:00:40 [core.py:708] ValueError: Free memory on device (13.2/23.6 GiB) on \
startup is less than desired GPU memory utilization (0.9, 21.24 GiB). Decrease GPU memory utilization or reduce GPU \
memory used by other processes.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_vllm_engine_core_failure_reads_the_log_tail(prefix):
    detail = prefix + "Engine core initialization failed. See root cause above. Failed core proc(s): {}"
    failure = classify(500, detail, VLLM_LOG_TAIL)
    assert failure.kind is K.OOM
    assert failure.scope is Scope.CANDIDATE
    assert failure.reason.startswith("server log: ValueError: Free memory on device (13.2/23.6 GiB)")
    assert "[core.py" not in failure.reason
    assert "lower gpu_memory_utilization" in failure.hint


def test_log_tail_is_ignored_when_the_detail_is_specific():
    failure = classify(400, "Model qwen2.5-instruct cannot be run on engine vllm.", VLLM_LOG_TAIL)
    assert failure.kind is K.ENGINE_UNSUPPORTED


def test_empty_detail_uses_log_tail_else_unknown():
    assert classify(None, "", VLLM_LOG_TAIL).kind is K.OOM
    failure = classify(None, "")
    assert failure.kind is K.UNKNOWN and "server log" in failure.reason


def test_long_reason_is_cut():
    failure = classify(500, PREFIX + "Failed to import module 'vllm' " + "x" * 1000)
    assert failure.kind is K.ENGINE_MISSING
    assert len(failure.reason) <= 240 and failure.reason.endswith("...")


# -- the signatures doctor looks for in a log, and scan() -------------------------------------------

from provision.launch.classify import SIGNATURES, scan  # noqa: E402

# One real-shaped line per signature doctor must know, with the kind it means.
LOG_LINES = [
    ("Model not found, name: qwen9, format: pytorch, size: 7, quantization: none", K.MODEL_NOT_FOUND),
    ("ValueError: Model not found in the model list, uid: e2e-chat", K.MODEL_GONE),
    ("ValueError: Model qwen2.5-instruct cannot be run on engine vllm.", K.ENGINE_UNSUPPORTED),
    ("ValueError: Free memory on device (13.2/23.6 GiB) on startup is less than desired GPU memory utilization "
     "(0.9, 21.24 GiB).", K.OOM),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`.", K.OOM),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", K.OOM),
    ("ModuleNotFoundError: No module named 'xoscar'", K.VENV_FAILED),
    ("ImportError: Failed to import vLLM: No module named 'vllm'", K.ENGINE_MISSING),
    ("RuntimeError: operator torchvision::nms does not exist", K.ENGINE_MISSING),
    ("Invalid input. `model_path`: /m/x File or directory does not exist.", K.BAD_PATH),
    ("safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge", K.DAMAGED_WEIGHTS),
    ("No available slot found for the model", K.NO_SLOT),
    ("Model is already in the model list, uid: emb1", K.UID_IN_USE),
]


@pytest.mark.parametrize(("line", "kind"), LOG_LINES, ids=[k.value + f"-{i}" for i, (_, k) in enumerate(LOG_LINES)])
def test_each_log_signature_is_found_with_its_line_number(line, kind):
    text = "INFO start\n" + PREFIX + line + "\nINFO more\n"
    found = scan(text)
    assert [(m.line, m.signature.kind) for m in found] == [(2, kind)]
    assert found[0].signature.hint and "[address=" not in found[0].excerpt


def test_scan_names_the_specific_remedy():
    by_text = {line: scan(line)[0].signature for line, _ in LOG_LINES}
    assert "virtual_env: false" in by_text["ModuleNotFoundError: No module named 'xoscar'"].hint
    assert "torchvision" in by_text["RuntimeError: operator torchvision::nms does not exist"].hint
    assert "vllm" in by_text["ImportError: Failed to import vLLM: No module named 'vllm'"].hint.lower()
    assert "provision up" in by_text["ValueError: Model not found in the model list, uid: e2e-chat"].hint


def test_scan_reads_every_line_and_skips_live_server_signatures():
    text = "Connection refused\n" + VLLM_LOG_TAIL
    found = scan(text)
    assert [m.signature.name for m in found] == ["GPU memory held by others"]
    assert found[0].line == 6 and found[0].excerpt.startswith("ValueError: Free memory on device")
    assert scan("all fine\nnothing here\n") == []
    assert scan("x\nCUDA out of memory", first_line=10)[0].line == 11


def test_signature_names_are_unique():
    names = [s.name for s in SIGNATURES]
    assert len(names) == len(set(names))
