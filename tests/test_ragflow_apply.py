"""provision.ragflow.apply against the RAGFlow stand-in and a tiny Xinference: the calls, idempotence,
updates in place, the embedding guard, dry runs, each failure's remedy, and RAGFlow <= 0.25."""

from __future__ import annotations

import json
import threading

import pytest
from ragflow_standin import RagflowStandin, TinyXinference
from support import free_port, port_free

from provision.ragflow.api import RagflowClient, RagflowError
from provision.ragflow.apply import Desired, StackModel, apply, ragflow_base_url, remedy, status

P = "/api/v1/providers/Xinference"
KEY = "sekrit-key"


@pytest.fixture()
def client(standin):
    return RagflowClient(standin.url, api_token=standin.api_token)


def stack(url: str, *, key: str = "", models=None, instance: str = "local", set_defaults: bool = True) -> Desired:
    models = models if models is not None else [
        StackModel("chat-1", "chat", 32768),
        StackModel("emb-1", "embedding", 512, dimensions=8),
        StackModel("rr-1", "rerank", 512),
    ]
    return Desired(instance, url + "/v1", key, models, set_defaults)


def writes(standin) -> list[tuple[str, str]]:
    return [(c["method"], c["path"]) for c in standin.writes()]


# -- the first apply ----------------------------------------------------------------------------------


def test_first_apply_makes_provider_instance_models_and_defaults(standin, client, xinference):
    result = apply(client, stack(xinference.url))
    assert writes(standin) == [
        ("PUT", "/api/v1/providers"),
        ("POST", f"{P}/instances"),
        ("PUT", f"{P}/instances/local"),
        ("PATCH", "/api/v1/models/default"),
        ("PATCH", "/api/v1/models/default"),
        ("PATCH", "/api/v1/models/default"),
    ]
    create = next(c for c in standin.calls if c["method"] == "POST" and c["path"] == f"{P}/instances")
    assert create["body"] == {"instance_name": "local"}  # name only: RAGFlow calls no model
    put = next(c for c in standin.calls if c["method"] == "PUT" and c["path"].startswith(f"{P}/instances/"))
    assert put["body"]["base_url"] == xinference.url  # no /v1: discovery would ask /v1/v1/models
    assert put["body"]["api_key"] == "x"  # never empty: RAGFlow's chat and embedding clients refuse it
    assert put["body"]["verify"] is False and all(m["extra"] == {} for m in put["body"]["model_info"])
    inst = standin.instance("local")
    assert {n: (m["model_type"], m["extra"]["max_tokens"], m["extra"]["verify"]) for n, m in inst["models"].items()} == {
        "chat-1": (["chat"], 32768, "success"), "emb-1": (["embedding"], 512, "success"),
        "rr-1": (["rerank"], 512, "success")}  # each checked alone: none stays "unknown"
    assert standin.defaults == {t: (inst["id"], uid) for t, uid in
                                (("chat", "chat-1"), ("embedding", "emb-1"), ("rerank", "rr-1"))}
    assert result.changed and result.ok
    assert [(c.uid, c.ok, c.stored) for c in result.checks] == [
        ("chat-1", True, "success"), ("emb-1", True, "success"), ("rr-1", True, "success")]


def test_each_model_is_checked_alone_right_after_warm(standin, client, xinference):
    seen = []

    def warm(model):
        seen.append((model.uid, len(standin.calls)))

    apply(client, stack(xinference.url), warm=warm)
    assert [uid for uid, _ in seen] == ["chat-1", "emb-1", "rr-1"]
    for uid, at in seen:
        nxt = standin.calls[at]  # the very next call RAGFlow gets is the check of that model alone
        assert nxt["path"] == f"{P}/connection"
        assert nxt["body"]["model_info"] == [{"model_name": uid, "model_type": [nxt["body"]["model_info"][0]["model_type"][0]]}]
        assert nxt["body"]["instance_id"] == standin.instance("local")["id"]
    assert sorted(r["body"]["model"] for r in xinference.requests) == ["chat-1", "emb-1", "rr-1"]


def test_the_stacks_key_is_sent_and_never_shown(standin, client, xinference):
    xinference.api_key = KEY
    result = apply(client, stack(xinference.url, key=KEY))
    assert result.ok
    assert standin.instance("local")["api_key"] == KEY
    assert all(r["auth"] == f"Bearer {KEY}" for r in xinference.requests)
    shown = json.dumps(result.to_json()) + "\n".join(result.lines())
    assert KEY not in shown


# -- the second apply ---------------------------------------------------------------------------------


def test_second_apply_changes_nothing_and_says_so(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.calls.clear()
    result = apply(client, stack(xinference.url))
    assert writes(standin) == []
    assert not result.changed and result.steps == []
    assert all(d.action == "unchanged" for d in result.defaults)
    assert "no change: RAGFlow already has this stack" in result.lines()
    checks = [c for c in standin.calls if c["path"].endswith("/connection")]
    assert len(checks) == 3 and all("instance_id" not in c["body"] for c in checks)  # nothing to store either


def test_a_second_apply_never_creates_a_second_instance(standin, client, xinference):
    apply(client, stack(xinference.url))
    apply(client, stack(xinference.url, key="other"))
    assert [i["instance_name"] for i in standin.instances] == ["local"]


# -- updates in place ---------------------------------------------------------------------------------


def test_a_changed_base_url_updates_the_instance_in_place(standin, client, xinference):
    apply(client, stack(xinference.url))
    inst_id = standin.instance("local")["id"]
    with TinyXinference() as moved:
        standin.calls.clear()
        result = apply(client, stack(moved.url))
        assert writes(standin) == [("PUT", f"{P}/instances/{inst_id}")]
        assert standin.instance("local")["base_url"] == moved.url and standin.instance("local")["id"] == inst_id
        assert [s.action for s in result.steps] == ["update"]
        assert f"Base URL {xinference.url} -> {moved.url}" in result.steps[0].reason
        assert result.ok and len(moved.requests) == 3


def test_a_changed_key_updates_the_instance(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.calls.clear()
    result = apply(client, stack(xinference.url, key=KEY))
    assert [s.reason for s in result.steps] == ["API key differs"]
    assert standin.instance("local")["api_key"] == KEY


def test_a_model_removed_from_the_stack_leaves_the_instance(standin, client, xinference):
    apply(client, stack(xinference.url))
    smaller = stack(xinference.url, models=[StackModel("chat-1", "chat", 32768), StackModel("emb-1", "embedding", 512)])
    standin.calls.clear()
    result = apply(client, smaller)
    assert set(standin.instance("local")["models"]) == {"chat-1", "emb-1"}
    assert "model rr-1: not in the stack" in result.steps[0].reason
    assert [d.action for d in result.defaults] == ["unchanged", "unchanged", "skipped"]


def test_a_changed_max_tokens_and_a_new_model(standin, client, xinference):
    apply(client, stack(xinference.url))
    xinference.models["chat-2"] = {"model_type": "LLM", "context_length": 4096}
    bigger = stack(xinference.url, models=[StackModel("chat-1", "chat", 8192), StackModel("chat-2", "chat", 4096)])
    result = apply(client, bigger)
    models = standin.instance("local")["models"]
    assert models["chat-1"]["extra"]["max_tokens"] == 8192 and models["chat-2"]["extra"]["verify"] == "success"
    assert "model chat-1: max tokens 32768 -> 8192" in result.steps[0].reason
    assert "model chat-2: not in RAGFlow" in result.steps[0].reason


def test_an_inactive_model_is_activated(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.instance("local")["models"]["rr-1"]["status"] = "inactive"
    standin.calls.clear()
    result = apply(client, stack(xinference.url))
    assert writes(standin) == [("PATCH", f"{P}/instances/local/models/rr-1"), ("PATCH", "/api/v1/models/default")]
    assert [s.action for s in result.steps] == ["activate", "set"]  # the default was dropped while inactive


def test_an_empty_instance_left_by_a_duplicate_is_reported(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin._new_instance("local", "", "", "")  # what a second POST of the same name leaves: local(1)
    result = apply(client, stack(xinference.url))
    assert any("local(1)" in w for w in result.warnings)
    assert not result.changed


def test_defaults_can_be_left_alone(standin, client, xinference):
    result = apply(client, stack(xinference.url, set_defaults=False))
    assert standin.defaults == {} and result.defaults == []


# -- failures and their remedies ----------------------------------------------------------------------


def test_a_failing_model_is_reported_with_its_remedy_and_its_default_held(standin, client, xinference):
    del xinference.models["emb-1"]
    result = apply(client, stack(xinference.url))
    check = next(c for c in result.checks if c.uid == "emb-1")
    assert check.ok is False and "Model not found in the model list" in check.message
    assert "launch it" in check.remedy
    assert check.stored == "fail" and standin.instance("local")["models"]["emb-1"]["extra"]["verify"] == "fail"
    held = next(d for d in result.defaults if d.model_type == "embedding")
    assert held.action == "held" and "emb-1" in held.reason and "embedding" not in standin.defaults
    assert not result.ok
    text = "\n".join(result.lines())
    assert "FAIL embedding emb-1" in text and "fix: Xinference serves no model with this UID" in text
    standin.calls.clear()
    apply(client, stack(xinference.url))  # still failing: the stored "fail" is not written again
    assert writes(standin) == []


def test_refused_connection(standin, client, xinference):
    url = f"http://127.0.0.1:{free_port()}"
    result = apply(client, stack(url))
    assert [c.ok for c in result.checks] == [False, False, False]
    for check in result.checks:
        assert "bind Xinference to 0.0.0.0" in check.remedy and "host.docker.internal:host-gateway" in check.remedy
    emb = next(c for c in result.checks if c.uid == "emb-1")
    assert "Connection error" in emb.message


def test_wrong_key(standin, client, xinference):
    xinference.api_key = "the-real-key"
    result = apply(client, stack(xinference.url, key="wrong"))
    emb = next(c for c in result.checks if c.uid == "emb-1")
    assert "Error code: 401" in emb.message and "refused the API key" in emb.remedy
    rerank = next(c for c in result.checks if c.uid == "rr-1")
    assert "401 Client Error" in rerank.message and "refused the API key" in rerank.remedy


def test_a_model_that_does_not_answer_in_time(standin, client, xinference):
    standin.verify_timeout = 0.2
    xinference.hold["chat-1"] = threading.Event()
    try:
        result = apply(client, stack(xinference.url))
    finally:
        xinference.hold["chat-1"].set()
    chat = next(c for c in result.checks if c.uid == "chat-1")
    assert chat.message == "Timeout accessing model(Xinference/chat-1)." and "warm it" in chat.remedy


def test_a_refused_ragflow_credential_stops_everything(standin, xinference):
    bad = RagflowClient(standin.url, api_token="ragflow-wrong")
    with pytest.raises(RagflowError) as info:
        apply(bad, stack(xinference.url))
    assert info.value.status == 401
    assert [c["path"] for c in standin.calls] == ["/api/v1/system/version", "/api/v1/providers"]  # then stop


@pytest.mark.parametrize("desired, fragment", [
    (Desired("default", "http://h:1", "", []), "`default`"),
    (Desired("local", "http://h:1", "", [StackModel("a", "chat", 1), StackModel("a", "chat", 1)]), "listed twice"),
    (Desired("local", "http://h:1", "", [StackModel("a", "vision", 1)]), "none of chat, embedding, rerank"),
    (Desired("local", "not a url", "", []), "has no host"),
])
def test_an_impossible_stack_is_refused_before_any_call(standin, client, desired, fragment):
    with pytest.raises(RagflowError) as info:
        apply(client, desired)
    assert fragment in info.value.message and standin.calls == []


@pytest.mark.parametrize("message, base, fragment", [
    ("Embedding request failed for XinferenceEmbed. Error: Connection error.", "http://127.0.0.1:9997",
     "host.docker.internal:9997"),
    ("HTTPConnectionPool(host='host.docker.internal', port=9997): Max retries exceeded with url: /v1/rerank",
     "http://host.docker.internal:9997", 'extra_hosts: "host.docker.internal:host-gateway"'),
    ("Connection refused", "http://10.1.2.3:9997", "open port 9997 in the firewall"),
    ("Error code: 401 - {'detail': 'Could not validate credentials'}", "http://h:1", "refused the API key"),
    ("401 Client Error: Unauthorized for url: http://h:1/v1/rerank", "http://h:1", "refused the API key"),
    ("404 Client Error: Not Found for url: http://h:1/v1/v1/rerank", "http://h:1/v1", "adds another /v1"),
    ("anything", "http://h:1/v1/", "give RAGFlow http://h:1 "),
    ("Internal server error", "http://h:1", "any non-empty key"),
    ("\nTimeout accessing embedding model(bge).", "http://h:1", "LLM_TIMEOUT_SECONDS"),
    ("Error code: 404 - {'detail': \"Model not found in the model list, uid: x\"}", "http://h:1", "launch it"),
    ("Error code: 503 - {'detail': 'loading'}", "http://h:1", "still loading"),
    ("Fail to access model(Xinference/c).No valid response received", "http://127.0.0.1:1", "is the UID running"),
    ("No models found for provider 'Xinference'", "http://h:1", "ending in /v1"),
    ("HTTPConnectionPool(host='10.1.2.3', port=9997): Max retries exceeded with url: /v1/rerank (Caused by "
     "ProxyError('Unable to connect to proxy', RemoteDisconnected('Remote end closed connection'))",
     "http://10.1.2.3:9997", "NO_PROXY"),
    ("Error code: 502 - <html><title>502 Bad Gateway</title></html>", "http://10.1.2.3:9997", "NO_PROXY"),
    ("something else entirely", "http://h:1", None),
])
def test_remedy(message, base, fragment):
    found = remedy(message, base)
    if fragment is None:
        assert found is None
    else:
        assert fragment in found


@pytest.mark.parametrize("url, expected", [
    ("http://h:9997/v1", "http://h:9997"), ("http://h:9997/v1/", "http://h:9997"), ("http://h:9997/", "http://h:9997"),
    ("http://h:9997", "http://h:9997"),
])
def test_ragflow_base_url(url, expected):
    assert ragflow_base_url(url) == expected


def test_a_base_url_with_a_path_is_warned_about(standin, client, xinference):
    result = apply(client, Desired("local", xinference.url + "/prefix/v1", "", []), dry_run=True)
    assert any("drops it" in w for w in result.warnings)


# -- the embedding guard ------------------------------------------------------------------------------


def test_the_guard_holds_the_embedding_default_while_datasets_use_another_model(standin, client, xinference):
    ds = standin.add_dataset("kb1", "old-emb@other@Xinference", chunk_count=5, dim=384)
    standin.add_dataset("empty", "old-emb@other@Xinference", chunk_count=0)
    standin.add_dataset("mine", "emb-1@local@Xinference", chunk_count=2)
    result = apply(client, stack(xinference.url))
    assert "embedding" not in standin.defaults and "chat" in standin.defaults
    guard = result.embedding
    assert guard.held and not guard.switched
    assert [(d.id, d.name, d.chunk_count, d.embedding_model) for d in guard.datasets] == [
        (ds, "kb1", 5, "old-emb@other@Xinference")]
    assert guard.wanted_dimensions == 8 and guard.datasets[0].dimensions is None  # unknown without the check
    assert not [c for c in standin.calls if "/embedding/check" in c["path"]]
    text = "\n".join(result.lines())
    assert "kb1" in text and "NOT switched" in text and "? -> 8 dimensions" in text
    assert not result.ok


@pytest.mark.parametrize("dim, similarity, code, fragment", [
    (384, 1.0, 102, "different from the original (384)"),
    (8, 0.3, 10, "below 0.9"),
    (8, 0.97, 0, ""),
])
def test_switching_anyway_runs_ragflows_check_per_dataset(standin, client, xinference, dim, similarity, code, fragment):
    ds = standin.add_dataset("kb1", "old-emb@other@Xinference", dim=dim, similarity=similarity)
    result = apply(client, stack(xinference.url), switch_embedding=True)
    use = result.embedding.datasets[0]
    assert (use.check_code, fragment in use.check_message) == (code, True)
    assert use.dimensions == dim and result.embedding.switched
    assert standin.defaults["embedding"][1] == "emb-1"
    check = next(c for c in standin.calls if "/embedding/check" in c["path"])
    assert check["path"] == f"/api/v1/datasets/{ds}/embedding/check"
    assert check["body"]["embd_id"] == "emb-1@local@Xinference"
    if code == 0:
        assert use.avg_cos_sim == 0.97 and "compatible" in "\n".join(result.lines())


def test_no_guard_when_the_default_is_already_the_stacks(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.add_dataset("kb1", "old-emb@other@Xinference")
    result = apply(client, stack(xinference.url))
    assert result.embedding is None and not result.changed


# -- dry run ------------------------------------------------------------------------------------------


def test_dry_run_makes_no_change_and_shows_the_calls(standin, client, xinference):
    result = apply(client, stack(xinference.url, key=KEY), dry_run=True, warm=lambda m: pytest.fail("warmed"))
    assert writes(standin) == [] and {c["method"] for c in standin.calls} == {"GET"}
    assert xinference.requests == [] and standin.instances == []
    shown = [(c["method"], c["path"]) for c in result.calls]
    assert shown[:3] == [("PUT", "/api/v1/providers"), ("POST", f"{P}/instances"), ("PUT", f"{P}/instances/local")]
    assert shown.count(("POST", f"{P}/connection")) == 3 and shown.count(("PATCH", "/api/v1/models/default")) == 3
    assert all(not s.done for s in result.steps)
    assert result.calls[2]["body"]["api_key"] == "(hidden)"
    text = "\n".join(result.lines())
    assert KEY not in text and KEY not in json.dumps(result.to_json())
    assert "dry run: nothing was changed" in text and "calls it would make:" in text
    assert all(c.ok is None for c in result.checks)


def test_dry_run_of_an_update(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.calls.clear()
    result = apply(client, stack(xinference.url, key=KEY), dry_run=True)
    assert writes(standin) == [] and standin.instance("local")["api_key"] == "x"
    assert [s.line() for s in result.steps] == ["update (would) instance local: API key differs"]


# -- status -------------------------------------------------------------------------------------------


def test_status_in_sync_after_apply(standin, client, xinference):
    apply(client, stack(xinference.url))
    standin.calls.clear()
    found = status(client, stack(xinference.url))
    assert found.in_sync and found.key_matches and found.instance_base_url == xinference.url
    assert [(m.uid, m.registered, m.verify) for m in found.models] == [
        ("chat-1", True, "success"), ("emb-1", True, "success"), ("rr-1", True, "success")]
    assert writes(standin) == [] and {c["method"] for c in standin.calls} == {"GET"}
    assert "in sync" in "\n".join(found.lines())
    json.dumps(found.to_json())


def test_status_lists_the_differences(standin, client, xinference):
    apply(client, stack(xinference.url, models=[StackModel("chat-1", "chat", 32768), StackModel("rr-1", "rerank", 512)]))
    standin.defaults.pop("chat")
    found = status(client, stack(xinference.url, key=KEY))
    assert not found.in_sync and found.key_matches is False
    assert found.extra_models == []
    assert "model emb-1: not in RAGFlow" in found.differences
    assert "API key differs" in found.differences
    assert "default chat: (none), expected chat-1@local@Xinference" in found.differences
    assert next(m for m in found.models if m.uid == "emb-1").registered is False


def test_status_without_anything_in_ragflow(client, xinference):
    found = status(client, stack(xinference.url))
    assert not found.instance_found
    assert found.differences[:2] == ["RAGFlow has no Xinference provider", "RAGFlow has no instance 'local'"]
    assert "NOT in RAGFlow" in "\n".join(found.lines())


# -- RAGFlow <= 0.25 ----------------------------------------------------------------------------------


@pytest.fixture(params=["v0.25.0", "v0.25.6"])
def legacy(request):
    with RagflowStandin(version=request.param, verify_timeout=2.0) as server:
        port = server.port
        yield server
    assert port_free(port)


def test_legacy_apply_adds_each_model_and_sets_the_defaults(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    seen = []
    result = apply(client, stack(xinference.url), warm=lambda m: seen.append((m.uid, len(legacy.calls))))
    adds = [c for c in legacy.calls if c["path"] == "/v1/llm/add_llm"]
    assert [(c["body"]["llm_name"], c["body"]["model_type"], c["body"]["api_base"], c["body"]["api_key"],
             c["body"]["max_tokens"], "verify" in c["body"]) for c in adds] == [
        ("chat-1", "chat", xinference.url, "x", 32768, False), ("emb-1", "embedding", xinference.url, "x", 512, False),
        ("rr-1", "rerank", xinference.url, "x", 512, False)]
    for uid, at in seen:  # add_llm calls the model: warm right before it
        assert legacy.calls[at]["path"] == "/v1/llm/add_llm" and legacy.calls[at]["body"]["llm_name"] == uid
    assert legacy.tenant["llm_id"] == "chat-1@Xinference" and legacy.tenant["embd_id"] == "emb-1@Xinference"
    assert legacy.tenant["rerank_id"] == "rr-1@Xinference"
    path = "/v1/user/set_tenant_info" if legacy.version == "v0.25.0" else "/api/v1/users/me/models"
    assert writes(legacy)[-1][1] == path
    assert result.ok and result.generation == "llm_app"
    assert [s.action for s in result.steps] == ["create"] * 3 + ["set"] * 3


def test_legacy_second_apply_only_checks(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    apply(client, stack(xinference.url))
    legacy.calls.clear()
    result = apply(client, stack(xinference.url))
    assert writes(legacy) == [] and not result.changed
    checks = [c for c in legacy.calls if c["path"] == "/v1/llm/add_llm"]
    assert len(checks) == 3 and all(c["body"]["verify"] is True for c in checks)
    assert result.ok


def test_legacy_removes_only_the_models_at_its_base_url(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    apply(client, stack(xinference.url))
    legacy.llms["someone-elses"] = {"id": 99, "type": "chat", "api_base": "http://other:1", "api_key": "k",
                                    "max_tokens": 1, "status": "1"}
    result = apply(client, stack(xinference.url, models=[StackModel("chat-1", "chat", 32768)]))
    assert set(legacy.llms) == {"chat-1", "someone-elses"}
    assert sorted(s.target for s in result.steps if s.action == "delete") == ["model emb-1", "model rr-1"]


def test_legacy_failing_model_is_not_stored(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    del xinference.models["rr-1"]
    result = apply(client, stack(xinference.url))
    rerank = next(c for c in result.checks if c.uid == "rr-1")
    assert rerank.ok is False and "404 Client Error" in rerank.message and "launch it" in rerank.remedy
    assert "rr-1" not in legacy.llms and legacy.tenant["rerank_id"] == ""
    assert next(d for d in result.defaults if d.model_type == "rerank").action == "held"


def test_legacy_guard_and_status(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    legacy.add_dataset("kb", "old@Xinference")
    result = apply(client, stack(xinference.url))
    assert result.embedding.held and legacy.tenant["embd_id"] == ""
    found = status(client, stack(xinference.url))
    assert found.generation == "llm_app" and found.key_matches is None
    assert "default embedding: (none), expected emb-1@Xinference" in found.differences


def test_legacy_dry_run(legacy, xinference):
    client = RagflowClient(legacy.url, api_token=legacy.api_token)
    result = apply(client, stack(xinference.url, key=KEY), dry_run=True)
    assert writes(legacy) == [] and xinference.requests == []
    assert [c["path"] for c in result.calls].count("/v1/llm/add_llm") == 3
    assert KEY not in json.dumps(result.to_json())
