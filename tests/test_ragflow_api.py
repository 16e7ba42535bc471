"""provision.ragflow.api against the RAGFlow stand-in (tests/ragflow_standin.py) and a tiny Xinference."""

from __future__ import annotations

import base64

import pytest
import requests
from ragflow_standin import RagflowStandin
from support import free_port

from provision.ragflow import api
from provision.ragflow.api import RagflowAuthError, RagflowClient, RagflowError, encrypt_password
from provision.ragflow.calls import LLM_APP, PROVIDERS, calls, model_ref, parse_version

P = "/api/v1/providers/Xinference"


@pytest.fixture()
def client(standin):
    return RagflowClient(standin.url, api_token=standin.api_token)


def ready(client, standin, xinference, name="local"):
    """Provider + an instance with the three models of the tiny Xinference (stored, not verified)."""
    client.add_provider()
    client.create_instance(name)
    client.update_instance(name, instance_name=name, base_url=xinference.url, api_key="x", model_info=[
        {"model_name": "chat-1", "model_type": ["chat"], "max_tokens": 32768},
        {"model_name": "emb-1", "model_type": ["embedding"], "max_tokens": 512},
        {"model_name": "rr-1", "model_type": ["rerank"], "max_tokens": 512},
    ])


# -- values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, number", [
    ("v0.27.0", (0, 27, 0)), ("v0.25.1-12-gabcdef", (0, 25, 1)), ("0.24", (0, 24, 0)), ("unknown", None), ("", None),
])
def test_parse_version(text, number):
    assert parse_version(text) == number


def test_model_ref_by_generation():
    assert model_ref("bge", "local", PROVIDERS) == "bge@local@Xinference"
    assert model_ref("bge", "local", LLM_APP) == "bge@Xinference"


def test_encrypt_password_is_rsa_over_base64_of_the_password(standin):
    from cryptography.hazmat.primitives.asymmetric import padding

    secret = encrypt_password("pässword", standin.public_key_pem)
    inner = standin._key.decrypt(base64.b64decode(secret), padding.PKCS1v15())
    assert base64.b64decode(inner).decode() == "pässword"
    assert len(base64.b64decode(encrypt_password("x"))) == 256  # RAGFlow's own 2048-bit key


def test_a_dry_run_call_hides_the_key():
    call = calls.update_instance("local", instance_name="local", base_url="http://h:1", api_key="sekrit",
                                 model_info=[{"model_name": "m", "model_type": ["chat"], "max_tokens": 1}])
    shown = call.shown()
    assert shown["body"]["api_key"] == "(hidden)" and "sekrit" not in str(shown)
    assert shown["body"]["model_info"][0]["extra"] == {}  # verify:false needs it (RAGFlow 0.27's KeyError)
    assert calls.verify("http://h:1", "sekrit", []).shown()["body"]["api_key"] == "(hidden)"


# -- version, credentials, envelope -------------------------------------------------------------------


def test_version_needs_no_credential_from_0_26(standin):
    version = RagflowClient(standin.url).version()
    assert (version.text, version.number, version.generation, version.legacy) == ("v0.27.0", (0, 27, 0), PROVIDERS, False)


@pytest.mark.parametrize("version, path", [
    ("v0.25.0", "/api/v1/system/version"),  # login required there
    ("v0.24.0", "/v1/system/version"),  # the old route: /api/v1/system/version is 404
])
def test_version_of_the_llm_app_generation(version, path):
    with RagflowStandin(version=version) as standin:
        with pytest.raises(RagflowAuthError):
            RagflowClient(standin.url).version()
        found = RagflowClient(standin.url, api_token=standin.api_token).version()
        assert found.generation == LLM_APP and found.text == version
        assert standin.calls[-1]["path"] == path


def test_unknown_version_text_asks_the_routes(standin, client, monkeypatch):
    monkeypatch.setattr(standin, "version", "unknown")
    assert client.version().generation == PROVIDERS
    assert client.version().number is None


def test_token_is_sent_as_bearer(standin, client):
    client.list_providers()
    assert standin.calls[-1]["auth"] == f"Bearer {standin.api_token}"


def test_refused_token_is_an_auth_error_and_is_not_retried(standin):
    bad = RagflowClient(standin.url, api_token="ragflow-nope")
    with pytest.raises(RagflowAuthError) as info:
        bad.list_providers()
    assert info.value.status == 401 and "API token" in info.value.hint
    assert info.value.detail == "<Unauthorized '401: Unauthorized'>"
    assert len(standin.calls) == 1


def test_login_with_email_and_password(standin):
    client = RagflowClient.connect(standin.url, email=standin.email, password=standin.password,
                                   public_key_pem=standin.public_key_pem)
    assert standin.calls[0]["path"] == "/api/v1/auth/login"
    assert standin.calls[0]["body"]["password"] != standin.password
    assert client.list_providers() == []
    assert standin.calls[-1]["auth"] == standin.jwt  # the JWT as RAGFlow sends it, no "Bearer"


def test_a_second_login_voids_the_first(standin):
    first = RagflowClient.connect(standin.url, email=standin.email, password=standin.password,
                                  public_key_pem=standin.public_key_pem)
    RagflowClient.connect(standin.url, email=standin.email, password=standin.password,
                          public_key_pem=standin.public_key_pem)
    with pytest.raises(RagflowAuthError):
        first.list_providers()


@pytest.mark.parametrize("email, password, fragment", [
    ("admin@ragflow.local", "wrong", "Email and password do not match!"),
    ("nobody@ragflow.local", "secret", "is not registered"),
])
def test_refused_login(standin, email, password, fragment):
    with pytest.raises(RagflowAuthError) as info:
        RagflowClient.connect(standin.url, email=email, password=password, public_key_pem=standin.public_key_pem)
    assert fragment in info.value.message and info.value.code == 109


def test_login_with_another_key_pair_says_so(standin):
    with pytest.raises(RagflowAuthError) as info:  # RAGFlow's embedded key: the stand-in cannot decrypt it
        RagflowClient.connect(standin.url, email=standin.email, password=standin.password)
    assert info.value.code == 500 and "another key pair" in info.value.hint


def test_login_route_before_0_25_1():
    with RagflowStandin(version="v0.24.0") as standin:
        RagflowClient.connect(standin.url, email=standin.email, password=standin.password,
                              public_key_pem=standin.public_key_pem)
        assert [c["path"] for c in standin.calls] == ["/api/v1/auth/login", "/v1/user/login"]


def test_no_credential_at_all():
    with pytest.raises(RagflowAuthError) as info:
        RagflowClient.connect("http://127.0.0.1:1")
    assert "API token" in info.value.hint


def test_a_failure_in_an_http_200_answer(client):
    client.add_provider()
    with pytest.raises(RagflowError) as info:
        client.add_provider()
    error = info.value
    assert (error.code, error.status, error.detail) == (102, 200, "Provider Xinference already exists")
    assert error.to_json()["code"] == 102


def test_unknown_route_is_404(standin, client):
    with pytest.raises(RagflowError) as info:
        client.add_llm("m", "chat", "http://h:1", "x", 1)
    assert info.value.status == 404 and "no route POST /v1/llm/add_llm" in info.value.message


def test_an_answer_that_is_not_the_envelope(xinference):
    with pytest.raises(RagflowError) as info:
        RagflowClient(xinference.url, api_token="t").get("/v1/models")
    assert "not its JSON envelope" in info.value.message


def test_nothing_answers():
    port = free_port()
    with pytest.raises(RagflowError) as info:
        RagflowClient(f"http://127.0.0.1:{port}", api_token="t").list_providers()
    assert "cannot reach RAGFlow" in info.value.message


@pytest.mark.parametrize("method, error, attempts", [
    ("GET", requests.ReadTimeout("slow"), 3),
    ("POST", requests.ReadTimeout("slow"), 1),  # it may have been received: a second create would duplicate
    ("POST", requests.ConnectTimeout("no connect"), 3),
])
def test_retried_only_when_unanswered_and_safe(monkeypatch, method, error, attempts):
    client = RagflowClient("http://127.0.0.1:1", api_token="t")
    tries = []

    def request(*args, **kwargs):
        tries.append(args)
        raise error

    monkeypatch.setattr(client.session, "request", request)
    with pytest.raises(RagflowError):
        client.send(api.Call(method, "/api/v1/providers"))
    assert len(tries) == attempts


# -- providers API ------------------------------------------------------------------------------------


def test_providers(client):
    assert client.list_providers() == []
    assert [p["name"] for p in client.list_providers(available=True)] == ["Xinference"]
    client.add_provider()
    assert client.list_providers()[0]["name"] == "Xinference"


def test_discovery_at_the_root_and_at_v1(standin, client, xinference):
    client.add_provider()
    found = {m["name"]: m for m in client.discover(xinference.url, "x")}
    assert found["chat-1"]["model_types"] == ["chat"] and found["chat-1"]["max_tokens"] == 32768
    assert found["rr-1"]["max_tokens"] == 8192  # Xinference reports no length for rerank
    assert client.discover(xinference.url + "/v1", "x") == []  # RAGFlow asks /v1/v1/models: silently nothing
    assert standin.upstream[-1]["url"].endswith("/v1/v1/models")
    assert standin.upstream[-1]["auth"] == "Bearer x"


def test_discovery_of_an_unreachable_server(client):
    client.add_provider()
    with pytest.raises(RagflowError) as info:
        client.discover(f"http://127.0.0.1:{free_port()}", "x")
    assert info.value.detail == "Internal server error"


def test_verify_stops_at_the_first_model_that_passes(standin, client, xinference):
    client.add_provider()
    verdict = client.verify(xinference.url, "x", [
        {"model_name": "nope", "model_type": ["embedding"]},
        {"model_name": "emb-1", "model_type": ["embedding"]},
        {"model_name": "chat-1", "model_type": ["chat"]},
    ])
    assert verdict.ok
    assert [r["body"]["model"] for r in xinference.requests] == ["nope", "emb-1"]  # chat-1 never called


def test_verify_sends_what_ragflow_sends(client, xinference):
    client.add_provider()
    for uid, kind in (("chat-1", "chat"), ("emb-1", "embedding"), ("rr-1", "rerank")):
        assert client.verify(xinference.url, "x", [{"model_name": uid, "model_type": [kind]}]).ok
    chat, emb, rerank = xinference.requests
    assert chat["path"] == "/v1/chat/completions" and chat["body"]["stream"] is True
    assert chat["body"]["messages"] == [{"role": "user", "content": "Hi"}] and chat["auth"] == "Bearer x"
    assert emb["body"]["encoding_format"] == "base64" and emb["body"]["input"] == ["Test if the api key is available"]
    assert rerank["path"] == "/v1/rerank" and rerank["body"]["return_documents"] == "true"
    assert rerank["auth"] is None  # key "x": RAGFlow's rerank client sends no header


@pytest.mark.parametrize("kind, fragment", [
    ("embedding", "Internal server error"), ("chat", "Internal server error"),
])
def test_verify_with_an_empty_key(client, xinference, kind, fragment):
    client.add_provider()
    uid = {"chat": "chat-1", "embedding": "emb-1"}[kind]
    verdict = client.verify(xinference.url, "", [{"model_name": uid, "model_type": [kind]}])
    assert not verdict.ok and verdict.message == fragment
    assert xinference.requests == []


def test_verify_with_an_empty_key_passes_for_rerank(client, xinference):
    client.add_provider()
    assert client.verify(xinference.url, "", [{"model_name": "rr-1", "model_type": ["rerank"]}]).ok


def test_verify_failure_messages(client, xinference):
    client.add_provider()
    verdict = client.verify(xinference.url, "x", [{"model_name": "nope", "model_type": ["embedding"]}])
    assert "Fail to access embedding model(nope).Embedding request failed for XinferenceEmbed. Error: Error code: 404" \
        in verdict.message and "Model not found in the model list" in verdict.message
    refused = f"http://127.0.0.1:{free_port()}"
    verdict = client.verify(refused, "x", [{"model_name": "rr-1", "model_type": ["rerank"]}])
    assert "Max retries exceeded with url: /v1/rerank" in verdict.message
    verdict = client.verify(refused, "x", [{"model_name": "chat-1", "model_type": ["chat"]}])
    assert verdict.message == "Fail to access model(Xinference/chat-1).No valid response received"


def test_verify_time_limit(standin, client, xinference):
    import threading

    client.add_provider()
    standin.verify_timeout = 0.2
    xinference.hold["emb-1"] = threading.Event()
    verdict = client.verify(xinference.url, "x", [{"model_name": "emb-1", "model_type": ["embedding"]}])
    assert verdict.message == "Timeout accessing embedding model(emb-1)."
    xinference.hold["emb-1"].set()


def test_instances_create_get_and_duplicates(standin, client, xinference):
    with pytest.raises(RagflowError) as info:
        client.create_instance("local")
    assert info.value.detail == "Provider 'Xinference' does not exist"
    assert client.get_instance("local") is None  # no provider yet
    client.add_provider()
    client.create_instance("local")  # name only: no model called
    assert xinference.requests == []
    inst = client.get_instance("local")
    assert (inst["api_key"], inst["base_url"], inst["instance_name"]) == ("", "", "local")
    assert client.get_instance(inst["id"])["instance_name"] == "local"
    assert client.get_instance("nosuch") is None
    info_model = [{"model_name": "emb-1", "model_type": ["embedding"], "max_tokens": 512}]
    client.create_instance("local", xinference.url, "x", info_model)  # the same name again: no error...
    assert sorted(i["instance_name"] for i in client.list_instances()) == ["local", "local(1)"]
    assert [m["name"] for m in client.list_models("local")] == ["emb-1"]  # ...the models went to the old one
    assert client.list_models("local(1)") == []


def test_duplicate_create_fails_on_the_old_instances_models(standin, client, xinference):
    ready(client, standin, xinference)
    with pytest.raises(RagflowError) as info:
        client.create_instance("local", xinference.url, "x", [{"model_name": "emb-1", "model_type": ["embedding"]}])
    assert info.value.detail == "Model 'emb-1' already exists for provider 'Xinference' and instance 'local'"
    assert client.list_models("local(1)") == []


def test_instance_name_default_is_refused(client):
    client.add_provider()
    with pytest.raises(RagflowError) as info:
        client.create_instance("default")
    assert info.value.detail == "Instance name cannot be 'default'"


def test_put_reconciles_the_model_set(standin, client, xinference):
    ready(client, standin, xinference)
    client.update_instance("local", instance_name="local", base_url=xinference.url, api_key="k2", model_info=[
        {"model_name": "emb-1", "model_type": ["embedding"], "max_tokens": 256},
        {"model_name": "new-1", "model_type": ["chat"], "max_tokens": 100},
    ])
    models = {m["name"]: m for m in client.list_models("local")}
    assert set(models) == {"emb-1", "new-1"}
    assert models["emb-1"]["max_tokens"] == 256 and models["new-1"]["verify"] == "unknown"
    assert client.get_instance("local")["api_key"] == "k2"


def test_put_verify_false_without_extra_is_ragflows_internal_error(standin, client, xinference):
    ready(client, standin, xinference)
    raw = api.Call("PUT", f"{P}/instances/local", {"instance_name": "local", "api_key": "x", "base_url": "http://h:1",
                                                   "model_info": [{"model_name": "emb-1", "model_type": ["embedding"]}],
                                                   "verify": False})
    with pytest.raises(RagflowError) as info:
        client.send(raw)
    assert info.value.detail == "Internal server error"
    assert client.get_instance("local")["base_url"] == "http://h:1"  # half applied, as in RAGFlow 0.27


def test_put_needs_all_four_fields(client, standin, xinference):
    ready(client, standin, xinference)
    with pytest.raises(RagflowError) as info:
        client.send(api.Call("PUT", f"{P}/instances/local", {"instance_name": "local", "api_key": "x",
                                                             "base_url": "http://h:1"}))
    assert (info.value.code, info.value.detail) == (101, "Missing required fields: model_info")


def test_instance_models_add_patch_delete(standin, client, xinference):
    ready(client, standin, xinference)
    before = len(xinference.requests)
    client.add_model("local", "extra-1", "embedding", 1024)  # stored without a call to Xinference
    assert len(xinference.requests) == before
    client.patch_model("local", "extra-1", status="inactive")
    model = next(m for m in client.list_models("local") if m["name"] == "extra-1")
    assert (model["status"], model["verify"], model["max_tokens"]) == ("inactive", "unknown", 1024)
    with pytest.raises(RagflowError) as info:
        client.delete_models("local", ["extra-1", "nosuch"])
    assert "not found" in info.value.detail
    client.delete_models("local", ["extra-1"])
    assert "extra-1" not in {m["name"] for m in client.list_models("local")}
    client.delete_instances(["local"])
    assert client.list_instances() == []


def test_defaults(standin, client, xinference):
    ready(client, standin, xinference)
    client.set_default("embedding", "local", "emb-1")
    defaults = client.get_defaults()
    assert defaults == [{"enable": True, "model_id": defaults[0]["model_id"], "model_instance": "local",
                         "model_name": "emb-1", "model_provider": "Xinference", "model_type": "embedding"}]
    with pytest.raises(RagflowError) as info:
        client.set_default("chat", "local", "emb-1")
    assert info.value.detail == "Model 'emb-1' isn't a chat model"
    with pytest.raises(RagflowError) as info:
        client.set_default("chat", "local", "nosuch")
    assert info.value.detail == "Internal server error"
    client.clear_default("embedding")
    assert client.get_defaults() == []


def test_datasets_and_the_embedding_check(standin, client, xinference):
    ready(client, standin, xinference)
    same = standin.add_dataset("same", "emb-1@local@Xinference", dim=8)
    other = standin.add_dataset("other", "old@local@Xinference", dim=384)
    unlike = standin.add_dataset("unlike", "old@local@Xinference", dim=8, similarity=0.2)
    empty = standin.add_dataset("empty", "old@local@Xinference", chunk_count=0)
    listed = {d["name"]: d for d in client.list_datasets(page_size=2)}  # paged
    assert set(listed) == {"same", "other", "unlike", "empty"} and listed["same"]["chunk_count"] == 3
    ok = client.check_embedding(same, "emb-1@local@Xinference")
    assert ok.ok and ok.data["summary"]["avg_cos_sim"] == 1.0
    mismatch = client.check_embedding(other, "emb-1@local@Xinference")
    assert mismatch.code == 102 and "dimension (8) of given embedding model is different from the original (384)" \
        in mismatch.message
    low = client.check_embedding(unlike, "emb-1@local@Xinference")
    assert low.code == 10 and low.data["summary"]["avg_cos_sim"] == 0.2
    assert client.check_embedding(empty, "emb-1@local@Xinference").message == \
        "No embedded chunks are available to compare."
    assert standin.upstream[-1]["body"]["input"][0] == "doc.txt"  # it embeds [doc name, chunk]


# -- <= v0.25: llm_app --------------------------------------------------------------------------------


@pytest.mark.parametrize("version, tenant_path", [("v0.25.0", "/v1/user/tenant_info"),
                                                  ("v0.25.6", "/api/v1/users/me/models")])
def test_llm_app_generation(xinference, version, tenant_path):
    with RagflowStandin(version=version, verify_timeout=2.0) as standin:
        client = RagflowClient(standin.url, api_token=standin.api_token)
        assert client.version().legacy
        assert client.add_llm("emb-1", "embedding", xinference.url, "x", 512, verify=True).ok
        assert client.my_llms() == []  # verify:true stores nothing
        assert client.add_llm("emb-1", "embedding", xinference.url, "x", 512).ok
        failed = client.add_llm("nope", "embedding", xinference.url, "x", 512)
        assert not failed.ok and "Error code: 404" in failed.message
        assert [(m["name"], m["type"], m["api_base"], m["max_tokens"]) for m in client.my_llms()] == [
            ("emb-1", "embedding", xinference.url, 512)]
        info = client.tenant_info()
        assert standin.calls[-1]["path"] == tenant_path
        client.set_tenant_info({**{k: info[k] for k in ("tenant_id", "llm_id", "asr_id", "img2txt_id")},
                                "embd_id": "emb-1@Xinference"})
        assert client.tenant_info()["embd_id"] == "emb-1@Xinference"
        with pytest.raises(RagflowError) as error:
            client.set_tenant_info({"tenant_id": info["tenant_id"]})
        assert error.value.code == 101
        client.delete_llm("emb-1")
        assert client.my_llms() == []


def test_llm_app_empty_key_for_chat(xinference):
    with RagflowStandin(version="v0.25.6") as standin:
        client = RagflowClient(standin.url, api_token=standin.api_token)
        verdict = client.add_llm("chat-1", "chat", xinference.url, "", 100)
        assert not verdict.ok and "api_key client option must be set" in verdict.message


def test_llm_app_embedding_check_route_before_0_25_1(xinference):
    with RagflowStandin(version="v0.25.0") as standin:
        client = RagflowClient(standin.url, api_token=standin.api_token)
        client.add_llm("emb-1", "embedding", xinference.url, "x", 512)
        ds = standin.add_dataset("kb", "old@Xinference", dim=8)
        assert client.check_embedding(ds, "emb-1@Xinference").ok
        assert [c["path"] for c in standin.calls[-2:]] == [f"/api/v1/datasets/{ds}/embedding/check",
                                                           "/v1/kb/check_embedding"]
