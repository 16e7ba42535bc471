"""End to end, server.mode: cluster: `provision up` starts a REAL xinference-supervisor and two REAL
xinference-workers on loopback (authentication on, the default), places the embedding model on worker 1
and the rerank model on worker 2 through worker_ip, and `status` shows where each runs; the plan rejects a
worker_ip that is not in the cluster; `down` stops all three processes.

One cluster per module; the tests run in order against it. The finaliser runs `provision down` and then
SIGKILLs, by the process groups the state recorded, whatever is still alive.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from e2e_support import E2EStack, e2e_stack, tiny_embedding
from support import free_port, free_ports, group_members, pid_alive, port_free

pytestmark = pytest.mark.e2e

RERANK = """\
  - role: rerank
    uid: cl-rerank
    name: bge-reranker-base
    source: tiny/rerank-bert
    engine: sentence_transformers
    worker_ip: {rerank_worker}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with e2e_stack(tmp_path_factory, "e2e-cluster") as stack:
        stack.supervisor_port, stack.worker_port = free_port(), free_ports(2)
        stack.workers = [f"127.0.0.1:{stack.worker_port}", f"127.0.0.1:{stack.worker_port + 1}"]
        stack.manifest = cluster_manifest(stack, "stack.yml", stack.workers[1])
        yield stack
        print("\ncluster e2e timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stack.timings.items()))


def cluster_manifest(stack: E2EStack, name: str, rerank_worker: str) -> Path:
    server = ["mode: cluster", f"supervisor_port: {stack.supervisor_port}", f"worker_port: {stack.worker_port}",
              "workers: 2"]
    models = tiny_embedding("cl-embed", f"worker_ip: 127.0.0.1:{stack.worker_port}") + RERANK.format(
        rerank_worker=rerank_worker)
    return stack.write_manifest(stack.manifest_text("e2e-cluster", models, server=server, tail="roles: {chat: 0}\n"), name)


def test_up_starts_a_supervisor_and_two_workers_and_places_the_models(stack: E2EStack):
    code, doc, output = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, f"up failed ({code}):\n{output[-6000:]}"
    assert doc["plan"]["server"] == "start" and ", ".join(stack.workers) in doc["plan"]["server_reason"]
    assert {m["uid"]: m["status"] for m in doc["models"]} == {"cl-embed": "running", "cl-rerank": "running"}
    assert {m["uid"]: m["payload"]["worker_ip"] for m in doc["models"]} == {"cl-embed": stack.workers[0],
                                                                         "cl-rerank": stack.workers[1]}
    assert all(c["ok"] for c in doc["checks"]) and len(doc["checks"]) == 2
    server = doc["server"]
    assert server["mode"] == "cluster" and server["auth"] is True
    assert server["supervisor_port"] == stack.supervisor_port
    assert [w["address"] for w in server["workers"]] == stack.workers
    processes = [server, *server["workers"]]
    assert all(pid_alive(p["pid"]) for p in processes)
    assert len({p["pgid"] for p in processes}) == 3  # one process group each
    assert (stack.state / "logs" / "worker-2.log").stat().st_size > 0
    stack.timings.update({f"up.{k}": v for k, v in doc["timings"].items()})


def test_each_model_process_runs_under_its_worker(stack: E2EStack):
    workers = stack.server()["workers"]
    for worker, uid in zip(workers, ("cl-embed", "cl-rerank")):
        titles = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                  for pid in group_members(worker["pgid"])]
        assert any(uid in title for title in titles), f"no process of {uid} in {worker['address']}'s group: {titles}"


def test_status_shows_the_processes_and_where_each_model_runs(stack: E2EStack):
    code, doc, output = stack.run("status", "--json")
    assert code == 0, output
    assert [(p["role"], p["alive"]) for p in doc["processes"]] == [
        ("supervisor", True), ("worker", True), ("worker", True)]
    assert [p["address"] for p in doc["processes"][1:]] == stack.workers
    assert {m["uid"]: (m["live"], m["workers"]) for m in doc["models"]} == {
        "cl-embed": ("running", [stack.workers[0]]), "cl-rerank": ("running", [stack.workers[1]])}
    code, _, text = stack.run("status")
    assert code == 0
    rows = {line.split()[1]: line.split()[-1] for line in text.splitlines() if line.startswith(("embedding", "rerank"))}
    assert rows == {"cl-embed": stack.workers[0], "cl-rerank": stack.workers[1]}


def test_verify_and_a_second_up_reuse_the_cluster(stack: E2EStack):
    code, doc, output = stack.run("verify", "--json")
    assert code == 0 and all(c["ok"] for c in doc["checks"]), output
    pids = [p["pid"] for p in (stack.server(), *stack.server()["workers"])]
    code, doc, output = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, output[-4000:]
    assert doc["plan"]["server"] == "reuse"
    assert {s["uid"]: s["action"] for s in doc["plan"]["steps"]} == {"cl-embed": "keep", "cl-rerank": "keep"}
    assert [p["pid"] for p in (doc["server"], *doc["server"]["workers"])] == pids


def test_the_plan_rejects_a_worker_ip_that_is_not_in_the_cluster(stack: E2EStack):
    stranger = f"127.0.0.1:{free_port()}"
    other = cluster_manifest(stack, "elsewhere.yml", stranger)
    code, doc, output = stack.run("plan", str(other), "--json")
    assert code == 0, output
    assert doc["plan"]["server"] == "reuse"
    step = next(s for s in doc["plan"]["steps"] if s["uid"] == "cl-rerank")
    assert step["action"] == "relaunch"  # its entry changed; nothing is launched by `plan`
    candidate = step["candidates"][0]
    assert candidate["skip_kind"] == "no_worker"
    assert candidate["skip_reason"].startswith(f"worker {stranger} is not in the cluster (workers: ")
    assert all(w in candidate["skip_reason"] for w in stack.workers)


def test_a_killed_worker_is_said_and_up_restarts_the_cluster(stack: E2EStack):
    """The fault matrix, a cluster worker killed (SIGKILL): its model process stays in its process group and
    holds the port; `status` says the worker is gone, `up` stops those leftovers and restarts the cluster."""
    worker = stack.server()["workers"][1]
    os.kill(worker["pid"], signal.SIGKILL)
    code, doc, output = stack.run("status", "--json")
    assert code == 1 and "workers gone" in doc["server"]["detail"], output[-2000:]
    assert [p["alive"] for p in doc["processes"]] == [True, True, False]
    code, doc, output = stack.run("up", str(stack.manifest), "--json")
    assert code == 0, output[-4000:]
    assert doc["plan"]["server"] == "restart" and "is gone" in doc["plan"]["server_reason"]
    assert "leftover process" in doc["earlier_server"]  # what the killed worker left in its group was stopped
    assert group_members(worker["pgid"]) == []
    assert all(c["ok"] for c in doc["checks"]) and len(doc["checks"]) == 2


def test_down_stops_all_three_processes(stack: E2EStack):
    server = stack.server()
    processes = [server, *server["workers"]]
    code, doc, output = stack.run("down", "--json")
    assert code == 0, output
    assert sorted(doc["terminated"]) == ["cl-embed", "cl-rerank"]
    assert doc["server"].startswith(f"worker {stack.workers[0]}: stopped in") and "supervisor: stopped in" in doc["server"]
    for process in processes:
        assert not pid_alive(process["pid"])
        assert group_members(process["pgid"]) == []
    for port in (stack.port, stack.supervisor_port, stack.worker_port, stack.worker_port + 1):
        assert port_free(port), f"port {port} is still held"
    code, doc, _ = stack.run("down", "--json")  # twice is harmless
    assert code == 0 and doc["terminated"] == []
