"""The fault matrix, lifecycle defects that can be pinned without a real server: key rotation, a slow poll,
the order of terminations, a `::` server, download slots, the environment, worker matching, damaged
weights, and `status` showing every attempt. (The same faults against the real server: test_faults_e2e.py.)
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests
import responses
from responses import matchers
from test_auth import PASSWORD, URL, jwt, stored
from test_launch import FakeClock, instances, post
from test_plan import LAUNCH, TERMINATE, chat, manifest, one_gpu, rerank, running

from provision import netaddr, placement, retry
from provision.apply import models as apply_models
from provision.apply.run import UpRun
from provision.auth import ensure_credentials
from provision.commands.status import status as read_status
from provision.console import Console
from provision.launch import FailureKind, classify, launch_chain
from provision.manifest import parse
from provision.observe import Observed, observe
from provision.plan import make_plan
from provision.render import status as render_status
from provision.runtime import server as runtime_server
from provision.state import AttemptRecord, ModelRecord, ServerRecord, State, StateDir
from provision.xinference import XinferenceClient

NEW_KEY = "xf-NewNewNewNewNewNewNewNew"


# -- defect 8: one API key per stack ------------------------------------------------------------------------

@responses.activate
def test_a_new_key_revokes_the_ones_it_replaces(tmp_path):
    state_dir, home = StateDir(tmp_path / "state"), tmp_path / "home"
    stored(state_dir, home)
    responses.get(f"{URL}/v1/models", status=401, json={"detail": "Could not validate credentials"},
                  match=[matchers.header_matcher({"Authorization": "Bearer xf-OldOldOldOldOldOldOld"})])
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": False})
    responses.post(f"{URL}/token", json={"access_token": jwt()})
    responses.post(f"{URL}/v1/admin/keys", status=201, json={"id": 7, "key": NEW_KEY, "name": "provision-ragflow-new"})
    responses.get(f"{URL}/v1/admin/keys", json=[
        {"id": 3, "name": "provision-ragflow-20261101-101010", "enabled": True},
        {"id": 5, "name": "old", "enabled": True},  # the name the stored credentials gave it
        {"id": 7, "name": "provision-ragflow-new", "enabled": True},
        {"id": 9, "name": "someone-elses-key", "enabled": True},
    ])
    deleted = [responses.delete(f"{URL}/v1/admin/keys/{i}", json={"ok": True}) for i in (3, 5)]
    responses.get(f"{URL}/v1/models", json={"data": []},
                  match=[matchers.header_matcher({"Authorization": f"Bearer {NEW_KEY}"})])
    events = []
    credentials = ensure_credentials(URL, home, tmp_path / "server.log", state_dir, on_event=events.append)
    assert credentials.api_key == NEW_KEY and credentials.key_id == 7 and credentials.password == PASSWORD
    assert all(d.call_count == 1 for d in deleted)
    assert not any(c.request.method == "DELETE" and c.request.path_url.endswith(("/7", "/9")) for c in responses.calls)
    assert any("revoked 2 API keys it replaces" in e for e in events)


# -- defect 10: a slow poll is not a dead server ----------------------------------------------------------

@responses.activate
def test_one_slow_poll_does_not_end_the_chain():
    m = parse("version: 1\nname: t\nmodels:\n  - role: embedding\n    uid: emb\n    name: bge-m3\n"
              "    local_path: /models/bge\nroles: {chat: 0, rerank: 0}\n", environ={})
    responses.add(responses.GET, f"{URL}/v1/engines/embedding/bge-m3", status=404, json={"detail": "Not Found"})
    post(uid="emb")
    for _ in range(retry.ATTEMPTS):  # one poll, retried as the policy does, every try times out
        responses.get(f"{URL}/v1/models/instances", body=requests.ReadTimeout("read timed out"))
    responses.get(f"{URL}/v1/models", json={"data": []})  # the server still answers
    instances("READY", uid="emb")
    clock = FakeClock()
    result = launch_chain(XinferenceClient(URL), m.candidates(0), resolve_path=lambda c: c.folder,
                          log_tail=lambda: "", clock=clock, sleep=clock.sleep)
    assert result.ok, result.attempts
    assert [a.outcome for a in result.attempts] == ["ready"]


@responses.activate
def test_a_server_that_stopped_answering_does_end_the_chain():
    m = parse("version: 1\nname: t\nmodels:\n  - role: embedding\n    uid: emb\n    name: bge-m3\n"
              "    local_path: /models/bge\n    fallbacks:\n      - engine: flag\nroles: {chat: 0, rerank: 0}\n",
              environ={})
    responses.add(responses.GET, f"{URL}/v1/engines/embedding/bge-m3", status=404, json={"detail": "Not Found"})
    post(uid="emb")
    responses.get(f"{URL}/v1/models/instances", body=requests.ConnectionError("refused"))
    responses.get(f"{URL}/v1/models", body=requests.ConnectionError("refused"))
    clock = FakeClock()
    result = launch_chain(XinferenceClient(URL), m.candidates(0), resolve_path=lambda c: c.folder,
                          log_tail=lambda: "", clock=clock, sleep=clock.sleep)
    assert [(a.outcome, a.kind) for a in result.attempts] == [("failed", "server_died"), ("skipped", "server_died")]


# -- defect 11: terminations free memory before the launches ----------------------------------------------

def test_the_memory_of_a_removed_model_counts_as_free(tmp_path):
    m = manifest(tmp_path, chat("vLLM", "gpu_memory_utilization: 0.6"))
    server = ServerRecord(url="http://127.0.0.1:9997", managed=True)
    previous = State(manifest="m.yml", name="t", server=server, models=[running(m, 0, "removed")])
    observed = Observed(previous=previous, server_reusable=True, running_uids={"removed"},
                        gpus=one_gpu(free_gib=30), gpu_source="NVML")  # the removed model holds the other 50 GiB
    plan = make_plan(m, observed)
    assert {s.uid: s.action for s in plan.steps} == {"chat": LAUNCH, "removed": TERMINATE}
    primary = plan.step("chat").candidates[0]
    assert primary.first and primary.skip_reason is None
    assert "what the relaunch, restart or termination stops frees memory first" in primary.memory


# -- defect 13: one wildcard rule, so a `::` server is reused ---------------------------------------------

@pytest.mark.parametrize("host", ["::", "0.0.0.0", "127.0.0.2", "localhost"])
def test_a_server_on_any_listen_address_is_reused(monkeypatch, tmp_path, host):
    m = manifest(tmp_path, rerank(), server=f"server:\n  host: '{host}'\n  port: 9997\n  auth: false\n  allow_open: true\n")
    record = ServerRecord(url=netaddr.url_for(host, 9997), managed=True, host=host, port=9997, auth=False)
    monkeypatch.setattr(runtime_server, "server_alive", lambda r: True)
    observed = observe(m, State(manifest="m", name="t", server=record))
    assert observed.server_reusable and not observed.server_moved, observed.server_move_reason


# -- defect 14: download.parallel bounds up's downloads -------------------------------------------------

def test_up_downloads_no_more_models_at_once_than_download_parallel(tmp_path, monkeypatch):
    models = "".join(f"  - role: embedding\n    uid: e{i}\n    name: bge-m3\n    source: acme/m{i}\n" for i in range(4))
    m = parse(f"version: 1\nname: t\ndownload:\n  parallel: 2\nmodels:\n{models}roles: {{chat: 0, rerank: 0, embedding: 4}}\n",
              base_dir=tmp_path, environ={})
    plan = make_plan(m, Observed(gpus=[]))
    run = UpRun(m, StateDir(tmp_path / "state"), State(manifest="m", name="t"), Console(quiet=True))
    run.server_error, at_once, most = RuntimeError("no server in this test"), [], [0]
    lock = threading.Lock()

    def slow_download(candidate, spec, **kwargs):
        with lock:
            at_once.append(candidate.uid)
            most[0] = max(most[0], len(at_once))
        time.sleep(0.3)
        with lock:
            at_once.remove(candidate.uid)
        raise apply_models.ProvisionError("not fetched in this test")

    monkeypatch.setattr(apply_models.download, "download_model", slow_download)
    run.server_ready.set()
    threads = [threading.Thread(target=apply_models.bring_up, args=(run, plan, i, threading.Semaphore(4)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2


# -- defect 15: worker matching on IPv6 and lists -------------------------------------------------------

@pytest.mark.parametrize("gpu_worker, worker_ip, same", [
    ("[fd00::1]:40001", "[fd00::2]:40001", False),  # two IPv6 hosts: `split(":")[0]` made both "["
    ("[fd00::1]:40001", "fd00::1", True),
    ("[fd00::1]:40001", "[fd00::1]:40001", True),
    ("10.0.0.6:40002", "10.0.0.5:40001,10.0.0.6:40002", True),  # the second entry of a list
    ("10.0.0.6:40002", "10.0.0.5,10.0.0.6", True),
    ("10.0.0.7:40002", "10.0.0.5:40001,10.0.0.6:40002", False),
    ("10.0.0.5:40001", "10.0.0.5", True),
    (None, "10.0.0.5", True),  # this machine's GPUs: no worker to tell apart
])
def test_a_gpu_is_matched_to_worker_ip_by_host_and_list(gpu_worker, worker_ip, same):
    assert placement.same_worker(gpu_worker, worker_ip) is same


# -- defect 16: nothing changes os.environ while the server's environment is being copied -------------

def test_the_server_environment_is_taken_before_downloads_start(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    m = parse("version: 1\nname: t\nmodels:\n  - role: embedding\n    uid: e\n    name: bge-m3\n    source: acme/m\n"
              "roles: {chat: 0, rerank: 0}\n", base_dir=tmp_path, environ={})
    run = UpRun(m, StateDir(tmp_path / "state"), State(manifest="m", name="t"), Console(quiet=True))
    from provision.download import fetch

    fetch._modelscope_client()  # what the first download does
    assert "TQDM_DISABLE" not in run.server_environ()
    assert os.environ.get("TQDM_DISABLE") is None  # and the process environment was not mutated


# -- defect 25: weights that cannot be loaded --------------------------------------------------------------

@pytest.mark.parametrize("detail", [
    "Error while deserializing header: HeaderTooLarge",
    "safetensors_rust.SafetensorError: Error while deserializing header: header too large",
    "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory",
    "OSError: Unable to load weights from pytorch checkpoint file for '/m/pytorch_model.bin'",
])
def test_weights_that_cannot_be_loaded_are_damaged_weights(detail):
    failure = classify(500, detail)
    assert failure.kind is FailureKind.DAMAGED_WEIGHTS
    assert "--refetch" in failure.hint


# -- status shows every attempt of the chain --------------------------------------------------------------

def test_status_shows_every_attempt_of_each_chain(tmp_path):
    state_dir = StateDir(tmp_path / "state")
    attempts = [AttemptRecord("primary", "bge-reranker-v2-m3", "vllm", "failed", "engine vllm is not usable: no vllm",
                              "engine_missing", 0.4),
                AttemptRecord("fallback 1", "bge-reranker-v2-m3", "sentence_transformers", "ready", "", "", 12.5)]
    state_dir.write(State(manifest="m", name="t", models=[
        ModelRecord(role="rerank", uid="rr", model_type="rerank", status="running", candidate="fallback 1",
                    engine="sentence_transformers", attempts=attempts)]))
    result = read_status(state_dir)
    text, data = render_status(result)
    assert "primary" in text and "engine_missing" in text and "engine vllm is not usable" in text
    assert "fallback 1" in text and "ready" in text
    assert data["models"][0]["attempts"][0]["reason"] == "engine vllm is not usable: no vllm"


# -- defect 9: what an interrupted `up` asked for is found by `down`, on a server.endpoint too -----------

@responses.activate
def test_down_terminates_a_model_an_interrupted_up_was_launching_on_an_endpoint(tmp_path, monkeypatch):
    state_dir = StateDir(tmp_path / "state")
    monkeypatch.setenv("E2E_KEY", "xf-external-key-0123456789")
    monkeypatch.setenv("E2E_ADMIN", "admin-password-0123")
    record = ServerRecord(url=URL, managed=False, api_key_env="E2E_KEY", admin_user="admin",
                          admin_password_env="E2E_ADMIN")
    state_dir.write(State(manifest="m", name="t", server=record, models=[
        ModelRecord(role="embedding", uid="half", model_type="embedding", status="launching", candidate="primary")]))
    responses.post(f"{URL}/token", json={"access_token": jwt()})
    deleted = responses.delete(f"{URL}/v1/models/half", json=None)
    from provision.commands.down import down

    result = down(state_dir)
    assert deleted.call_count == 1 and result.terminated == ["half"]
    assert "left running" in result.server  # not ours to stop
    assert state_dir.read().models[0].status == "terminated"
