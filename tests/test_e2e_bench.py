"""End to end: the bench (and doctor) against a REAL stack: xinference-local on CPU with the three tiny models
(CPU engines only), brought up by `provision up` from the loopback mirror, then brought down.

The bench runs with a tiny budget (1 s per level, concurrency 1 and 2): the figures are a CPU's and only
their shape is checked: every endpoint measured at both levels, figures positive, p50 <= p90 <= p99.
"""

from __future__ import annotations

import json

import pytest
from e2e_support import E2EStack, e2e_stack, tiny_embedding
from support import group_members, pid_alive, port_free

from provision import bench, render
from provision.commands.doctor import doctor
from provision.state import StateDir

pytestmark = pytest.mark.e2e

MODELS = tiny_embedding("bench-embed") + """\
  - role: rerank
    uid: bench-rerank
    name: bge-reranker-base
    source: tiny/rerank-bert
    engine: sentence_transformers
  - role: chat
    uid: bench-chat
    name: qwen2.5-instruct
    source: tiny/qwen2-chat
    engine: Transformers
    size_in_billions: 0.5
    format: pytorch
    quantization: none
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with e2e_stack(tmp_path_factory, "e2e-bench") as stack:
        stack.manifest = stack.write_manifest(stack.manifest_text("e2e-bench", MODELS))
        code, doc, output = stack.run("up", str(stack.manifest), "--json")
        assert code == 0, f"up failed ({code}):\n{output[-4000:]}"
        yield stack


def test_bench_measures_every_endpoint_of_the_real_stack(stack: E2EStack, tmp_path):
    # A shorter chat than the default (2 chunks, 32 tokens): a CPU answers a 6-chunk prompt in seconds, not ms.
    workload = bench.Workload(chat_chunks=2, chat_max_tokens=32)
    report = bench.run(StateDir(stack.state), duration=1, concurrency=[1, 2], workload=workload)
    assert [(e.name, e.uid) for e in report.endpoints] == [
        ("embedding", "bench-embed"), ("rerank", "bench-rerank"), ("chat", "bench-chat")]
    for endpoint in report.endpoints:
        assert endpoint.error is None, endpoint.error
        assert [lv.concurrency for lv in endpoint.levels] == [1, 2]
        for lv in endpoint.levels:
            assert lv.errors == 0, lv.error_samples
            assert lv.requests >= lv.concurrency and lv.seconds > 0 and lv.rps > 0
            assert 0 < lv.latency.p50 <= lv.latency.p90 <= lv.latency.p99 <= lv.latency.max
        assert endpoint.sentence.startswith(endpoint.name + " ")
    for lv in report.endpoint("chat").levels:
        assert lv.tokens > 0 and lv.tokens_per_s > 0
        assert 0 < lv.ttft.p50 <= lv.ttft.p90 <= lv.ttft.p99 and lv.ttft.p50 <= lv.latency.p99
        assert lv.tpot is None or lv.tpot.p50 > 0
    assert report.endpoint("embedding").workload["embed_batch"] == 16
    assert report.endpoint("rerank").workload["rerank_top_k"] == 64

    files, notes = bench.write_outputs(report, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["stack"] == "e2e-bench" and len(saved["endpoints"]) == 3
    assert bench.compare(saved, report).slower == []  # a run against itself got no slower
    assert files[0].name == "bench.json" and (notes == [] or "matplotlib" in notes[0])
    text = bench.text_lines(report)
    assert text[-3:] == [e.sentence for e in report.endpoints]
    print("\n".join(text))  # shown with -s: the figures of this machine
    stack.timings["bench"] = report.seconds


def test_bench_and_doctor_on_the_command_line(stack: E2EStack, tmp_path):
    out = tmp_path / "out"
    code, doc, output = stack.run("bench", "--duration", "1", "--concurrency", "1,2", "--endpoint", "embedding",
                                  "--endpoint", "bench-rerank", "--out", str(out), "--json")
    assert code == 0, output
    endpoints = doc["report"]["endpoints"]
    assert [(e["name"], e["uid"]) for e in endpoints] == [("embedding", "bench-embed"), ("rerank", "bench-rerank")]
    for endpoint in endpoints:
        assert [lv["concurrency"] for lv in endpoint["levels"]] == [1, 2]
        for lv in endpoint["levels"]:
            assert lv["errors"] == 0 and lv["rps"] > 0
            assert 0 < lv["latency"]["p50"] <= lv["latency"]["p90"] <= lv["latency"]["p99"]
        assert endpoint["sentence"].startswith(endpoint["name"] + " ")
    assert doc["files"][0] == str(out / "bench.json") and json.loads((out / "bench.json").read_text())["endpoints"]
    assert all(p.endswith(".png") for p in doc["files"][1:]) and (len(doc["files"]) == 3 or "provision[plot]" in doc["notes"][0])

    code, doc, output = stack.run("doctor", str(stack.manifest), "--json")
    assert code == 0 and doc["status"] == "success" and doc["blockers"] == 0, output


def test_doctor_finds_nothing_that_blocks_the_running_stack(stack: E2EStack):
    result = doctor(str(stack.manifest), StateDir(stack.state))
    text, data = render.doctor(result)
    assert result.exit_code == 0, text
    port = [f for f in result.findings if f.check == "port"]
    assert port[0].severity == "ok" and "held by the server provision started" in port[0].what, text
    auth = [f.what for f in result.findings if f.check == "auth"]
    assert any("API key works" in w for w in auth) and any("admin login works" in w for w in auth), text
    hub = [f for f in result.findings if f.check == "hub"]
    assert hub[0].severity == "ok", text
    attempts = {f.facts["uid"]: f.severity for f in result.findings if f.check == "attempts"}
    assert attempts == {"bench-embed": "ok", "bench-rerank": "ok", "bench-chat": "ok"}


def test_down_leaves_nothing_running(stack: E2EStack):
    server = stack.server()
    pid, pgid = server["pid"], server["pgid"]
    code, doc, output = stack.run("down", "--json")
    assert code == 0, output
    assert set(doc["terminated"]) == {"bench-embed", "bench-rerank", "bench-chat"}
    assert not pid_alive(pid) and group_members(pgid) == [] and port_free(stack.port)
