"""The bench's figures on fed samples (percentiles, levels, the sentence, compare), its workload's shape, and
the runner against a small stand-in server on loopback (the real stack: tests/test_e2e_bench.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provision import bench, render
from provision.bench.report import BenchReport, EndpointReport, compare
from provision.bench.stats import LevelStats, Percentiles, Sample, holds_sentence, percentile, summarize
from provision.bench.workload import Requests, make_chunks
from provision.commands.bench import bench as bench_command
from provision.errors import StateError, UsageError
from provision.state import ModelRecord, ServerRecord, State, StateDir


# -- statistics -----------------------------------------------------------------------------------------


def test_percentiles_interpolate_and_are_ordered():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    p = Percentiles.of([0.5, 0.1, 0.3, float("nan"), None])
    assert (p.p50, p.max, p.mean) == (0.3, 0.5, pytest.approx(0.3)) and p.p50 <= p.p90 <= p.p99 <= p.max
    assert Percentiles.of([]) is None


def test_a_level_counts_errors_apart_and_rates_successes():
    samples = [Sample(i * 0.1, 0.2, True) for i in range(8)] + [Sample(0.9, 1.0, False, "HTTP 500: boom")] * 2
    stats = summarize(4, samples, 2.0)
    assert (stats.requests, stats.errors, stats.rps) == (10, 2, 4.0)
    assert stats.latency.p99 == pytest.approx(0.2) and stats.error_samples == ["HTTP 500: boom"]
    assert stats.ttft is None and stats.tokens is None


def test_a_chat_level_has_token_figures():
    samples = [Sample(0, 2.0, True, ttft=0.5, tokens=31, tpot=0.05), Sample(0, 3.0, True, ttft=0.7, tokens=11, tpot=0.2)]
    stats = summarize(2, samples, 4.0, chat=True)
    assert stats.tokens == 42 and stats.tokens_per_s == pytest.approx(10.5)
    assert stats.ttft.p50 == pytest.approx(0.6) and stats.tpot.max == pytest.approx(0.2)


def level(concurrency: int, p99: float, errors: int = 0, requests: int = 20) -> LevelStats:
    return LevelStats(concurrency, requests, errors, 10.0, 2.0, Percentiles(p99 / 2, p99 * 0.9, p99, p99 / 2, p99))


@pytest.mark.parametrize("levels, sentence", [
    ([level(1, 0.1), level(2, 0.15), level(4, 0.19), level(8, 0.35)],
     "embedding holds concurrency 4 before p99 doubles at 8 (100 ms at 1, 350 ms at 8)."),
    ([level(1, 0.1), level(2, 0.25)], "embedding holds concurrency 1 only: p99 doubles at 2 (100 ms at 1, 250 ms at 2)."),
    ([level(1, 0.5), level(2, 0.6), level(4, 0.9)],
     "embedding holds concurrency 4, the highest measured, without p99 doubling (500 ms at 1, 900 ms at 4)."),
    ([level(1, 0.1), level(2, 0.12), level(4, 0.13, errors=3)],
     "embedding holds concurrency 2 before 3 of 20 requests failed at 4."),
    ([level(2, 1.5), level(4, 2.5)],
     "embedding holds concurrency 4, the highest measured, without p99 doubling (1.50 s at 2, 2.50 s at 4) "
     "(measured against concurrency 2, the lowest that worked)."),
    ([level(1, 0.1)], "embedding was measured at concurrency 1 only (p99 100 ms)."),
    ([level(1, 0.1, errors=20)], "embedding: no level answered every request, so it holds no concurrency."),
])
def test_the_sentence(levels, sentence):
    assert holds_sentence("embedding", levels) == sentence


def report_of(**p99_by_level) -> BenchReport:
    levels = [level(int(c[1:]), p99) for c, p99 in p99_by_level.items()]
    return BenchReport("s", "http://127.0.0.1:1", 0, 1, 10, [lv.concurrency for lv in levels],
                       [EndpointReport("rerank", "rerank", "r", {}, levels)])


def test_compare_marks_what_got_slower(tmp_path: Path):
    old = report_of(c1=0.10, c4=0.20)
    new = report_of(c1=0.105, c4=0.30, c8=0.5)
    new.endpoints[0].levels[0].rps = 1.5  # 2.0 -> 1.5 requests/s: 25% worse
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old.to_json()))
    result = compare(path, new.to_json())
    slower = {(c.concurrency, c.metric) for c in result.slower}
    assert slower == {(1, "rps"), (4, "p50"), (4, "p99")}  # c1's p99 is 5% worse: within the threshold
    assert result.exit_code == 1 and "rerank at concurrency 8 (new)" in result.missing
    assert "rerank at concurrency 4: p99 200 ms -> 300 ms (+50% worse)" in result.lines()
    assert compare(old, old).slower == [] and compare(old, old).exit_code == 0
    with pytest.raises(UsageError, match="not a report"):
        compare({"version": 9}, new)


def test_a_report_survives_its_json():
    report = report_of(c1=0.1, c2=0.3)
    again = BenchReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again.to_json() == report.to_json()
    assert report.to_json()["endpoints"][0]["sentence"].startswith("rerank holds concurrency 1 only")


# -- the workload -------------------------------------------------------------------------------------


def test_chunks_are_realistic_deterministic_and_varied():
    chunks = make_chunks(32)
    assert chunks == make_chunks(32) and len(set(chunks)) == 32
    assert all(230 <= len(c.split()) <= 420 for c in chunks)
    bodies = Requests()
    first, second = bodies.embedding("e", 0), bodies.embedding("e", 1)
    assert len(first["input"]) == 16 and first["input"] != second["input"]
    rerank = bodies.rerank("r", 0)
    assert len(rerank["documents"]) == 64 and rerank["return_documents"] == "true" and "top_n" not in rerank
    chat = bodies.chat("c", 0)
    assert chat["stream"] is True and "Here is the knowledge base" in chat["messages"][0]["content"]


# -- the runner against a stand-in server ------------------------------------------------------------------


class StandIn(BaseHTTPRequestHandler):
    delay = 0.01
    fail_rerank = False
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.seen.append((self.path, self.headers.get("Authorization")))
        time.sleep(self.delay)
        if self.path == "/v1/embeddings":
            return self._json({"data": [{"index": i, "embedding": [0.1, 0.2]} for i in range(len(body["input"]))]})
        if self.path == "/v1/rerank":
            if StandIn.fail_rerank:
                return self._json({"detail": "Model not found in the model list, uid: r"}, 400)
            return self._json({"results": [{"index": i, "relevance_score": 1 / (i + 1)}
                                           for i in range(len(body["documents"]))]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for token in ["Hel", "lo", " there"]:
            event = {"choices": [{"index": 0, "delta": {"content": token}}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.005)
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], '
                         b'"usage": {"completion_tokens": 3}}\n\ndata: [DONE]\n\n')

    def _json(self, data, status=200):
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture()
def stand_in():
    StandIn.seen, StandIn.fail_rerank = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def stack_state(tmp_path: Path, url: str, models=("embedding", "rerank", "chat")) -> StateDir:
    state = StateDir(tmp_path / "state")
    uids = {"embedding": "e", "rerank": "r", "chat": "c"}
    state.write(State(manifest="m.yml", name="stand-in", server=ServerRecord(url=url, managed=False),
                      models=[ModelRecord(role, uids[role], role, "running") for role in models]))
    return state


def test_the_bench_against_a_stand_in(stand_in, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bench.plot, "available", lambda: False)  # the PNGs: tests/test_e2e_bench.py, where matplotlib is
    result = bench_command(stack_state(tmp_path, stand_in), duration=0.3, concurrency=[2, 1], out=tmp_path / "out")
    report = result.report
    assert [e.name for e in report.endpoints] == ["embedding", "rerank", "chat"] and report.concurrency == [1, 2]
    for endpoint in report.endpoints:
        assert [lv.concurrency for lv in endpoint.levels] == [1, 2]
        for lv in endpoint.levels:
            assert lv.errors == 0 and lv.requests >= lv.concurrency and lv.rps > 0
            assert 0 < lv.latency.p50 <= lv.latency.p90 <= lv.latency.p99
    chat = report.endpoint("chat").levels[0]
    assert chat.tokens == 3 * chat.requests and 0 < chat.ttft.p50 < chat.latency.p50 and chat.tpot.p50 > 0
    assert result.exit_code == 0
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["stack"] == "stand-in"
    assert result.files == [str(tmp_path / "out" / "bench.json")] and "matplotlib is not installed" in result.notes[0]
    text, data = render.bench(result)
    lines = text.splitlines()
    assert lines[-6].startswith("Wrote") and lines[-5].startswith("matplotlib is not installed") and lines[-4] == ""
    assert [line.split(" ")[0] for line in lines[-3:]] == ["embedding", "rerank", "chat"]  # it ends with the sentences
    assert lines[-1].startswith("chat holds concurrency") and data["_errors"] == []
    assert {auth for _, auth in StandIn.seen} == {None}  # an external server without api_key_env: no header


def test_a_failing_endpoint_is_reported_not_measured(stand_in, tmp_path: Path):
    StandIn.fail_rerank = True
    result = bench_command(stack_state(tmp_path, stand_in, ("rerank",)), duration=0.2, concurrency=[1])
    (endpoint,) = result.report.endpoints
    assert endpoint.levels == [] and "HTTP 400" in endpoint.error and "Model not found in the model list" in endpoint.error
    assert result.exit_code == 1 and "not measured" in endpoint.sentence


def test_levels_are_bounded_in_requests(stand_in, tmp_path: Path):
    report = bench.run(stack_state(tmp_path, stand_in, ("embedding",)), duration=30, concurrency=[3], max_requests=5)
    (lv,) = report.endpoints[0].levels
    assert lv.requests == 5 and lv.stopped_by == "max_requests" and report.seconds < 10


def test_only_the_stacks_server_or_loopback_is_loaded(stand_in, tmp_path: Path):
    state = stack_state(tmp_path, stand_in)
    with pytest.raises(UsageError, match="loopback"):
        bench.run(state, duration=0.1, concurrency=[1], base_url="http://10.1.2.3:9997")
    with pytest.raises(UsageError, match="no running model is nope"):
        bench.run(state, duration=0.1, concurrency=[1], endpoints=["nope"])
    with pytest.raises(UsageError, match="between 1 and"):
        bench.run(state, duration=0.1, concurrency=[0])
    report = bench.run(state, duration=0.1, concurrency=[1], endpoints=["r"], base_url=stand_in.replace("127.0.0.1", "localhost"))
    assert [e.name for e in report.endpoints] == ["rerank"]
    empty = StateDir(tmp_path / "empty")
    with pytest.raises(StateError):
        bench.run(empty, duration=0.1, concurrency=[1])


def test_one_png_per_endpoint_where_matplotlib_is(tmp_path: Path):
    pytest.importorskip("matplotlib", reason="the `plot` extra is not installed: bench writes only JSON (tested above)")
    report = report_of(c1=0.1, c2=0.3)
    chat = EndpointReport("chat", "chat", "c", {}, [level(1, 0.5), level(4, 0.8)])
    for lv in chat.levels:
        lv.ttft, lv.tokens_per_s = Percentiles(0.1, 0.2, 0.3, 0.1, 0.3), 40.0
    report.endpoints += [chat, EndpointReport("embedding", "embedding", "e", {}, error="HTTP 500")]
    files, notes = bench.write_outputs(report, tmp_path / "out")
    assert notes == [] and [p.name for p in files] == ["bench.json", "bench-rerank.png", "bench-chat.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in files[1:])


# -- the command line -----------------------------------------------------------------------------------


def test_the_command_line(invoke, stand_in, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bench.plot, "available", lambda: False)
    state = stack_state(tmp_path, stand_in)
    out = tmp_path / "out"
    args = ["--state-dir", state.path, "bench", "--duration", "0.2", "--concurrency", "2,1", "--endpoint", "embedding",
            "--endpoint", "c", "--out", out]
    first = invoke(args + ["--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["command"] == "bench" and doc["status"] == "success" and doc["errors"] == []
    assert [e["name"] for e in doc["report"]["endpoints"]] == ["embedding", "chat"]  # rerank was not asked for
    assert doc["report"]["concurrency"] == [1, 2] and doc["files"] == [str(out / "bench.json")]
    assert "pip install 'provision[plot]'" in doc["notes"][0]
    assert first.stderr == ""  # --json: no progress lines

    again = invoke(args + ["--compare", out / "bench.json"])
    slower = "nothing is worse by more than 10%" not in again.stdout  # timing on a shared machine: either may happen
    assert again.exit_code == (1 if slower else 0), again.output
    assert "Against the earlier run:" in again.stdout and again.stdout.rstrip().splitlines()[-1].startswith("chat ")
    progress = again.stderr.splitlines()
    assert [line.split(":")[0] for line in progress] == [
        "bench embedding at concurrency 1", "bench embedding at concurrency 2", "bench chat at concurrency 1",
        "bench chat at concurrency 2"]

    (tmp_path / "other.json").write_text('{"version": 1}')
    wrong = invoke(args + ["--compare", tmp_path / "other.json"])
    assert wrong.exit_code == 2 and "not a report of `provision bench`" in wrong.stderr
    assert invoke(args + ["--compare", tmp_path / "none.json"]).exit_code == 2
    (tmp_path / "a-file").write_text("")
    StandIn.seen = []
    blocked = invoke(args[:-1] + [tmp_path / "a-file" / "out"])  # --out under a file: refused before any load
    assert blocked.exit_code == 2 and "cannot make" in blocked.stderr and StandIn.seen == []
    assert invoke(args[:-2] + ["--endpoint", "nope"]).exit_code == 2
    assert invoke(["--state-dir", state.path, "bench", "--duration", "0"]).exit_code == 2
    assert invoke(["--state-dir", state.path, "bench", "--concurrency", "1,,x"]).exit_code == 2
