"""End to end with authentication: `provision up` against the REAL xinference-local with server.auth on
(the default). provision performs the first-run setup, logs in and mints an API key; verify and the
OpenAI client work with the key and get 401 without it; a second `up` reuses the credentials, also after
the server was restarted; a manifest with server.endpoint reaches the same server with the key and the
admin password from environment variables; no key or password ever appears in what the CLI prints.

One small stack (a single embedding model) per module; the finaliser stops everything this module
started, by recorded PID and process group only.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import requests
from e2e_support import E2EStack, e2e_stack, tiny_embedding
from support import group_members, pid_alive, port_free

pytestmark = pytest.mark.e2e

HIDDEN = "(hidden; --show-key to print)"

ONLY_EMBEDDING = "roles: {chat: 0, rerank: 0, embedding: 1}\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with e2e_stack(tmp_path_factory, "e2e-auth", drop=("E2E_XINFERENCE_KEY", "E2E_XINFERENCE_ADMIN_PASSWORD")) as stack:
        stack.manifest = stack.write_manifest(stack.manifest_text("e2e-auth", tiny_embedding("auth-embed"), tail=ONLY_EMBEDDING))
        yield stack


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_sets_up_authentication(stack: E2EStack):
    run = stack.run("up", str(stack.manifest))  # the human output: progress lines on stderr, summary on stdout
    assert run.code == 0, f"up failed ({run.code}):\n{run.stderr}\n{run.stdout}"
    assert "first-run setup done" in run.stderr and "API key `provision-ragflow-" in run.stderr
    assert f"API key:    {HIDDEN}" in run.stdout
    assert "Setup token:" in (stack.state / "logs" / "server.log").read_text()  # the server needed its setup
    status = requests.get(f"{stack.base}/v1/admin/setup/status", timeout=10).json()
    assert status["needs_setup"] is False

    credentials = stack.credentials()
    assert list(json.loads((stack.state / "credentials.json").read_text())["servers"]) == [str(stack.home)]
    assert credentials["username"] == "admin" and len(credentials["password"]) >= 24
    assert credentials["api_key"].startswith("xf-")
    assert _mode(stack.state / "credentials.json") == 0o600
    assert _mode(stack.state) == 0o700
    assert _mode(stack.state / "ragflow" / "provider.json") == 0o600
    state = stack.state_json()
    assert state["server"]["auth"] is True
    assert credentials["api_key"] not in json.dumps(state) and credentials["password"] not in json.dumps(state)

    provider = json.loads((stack.state / "ragflow" / "provider.json").read_text())
    assert provider["api_key"] == credentials["api_key"]  # RAGFlow needs it
    assert state["models"][0]["status"] == "running"


def test_the_key_is_required_and_works(stack: E2EStack):
    from openai import AuthenticationError, OpenAI

    key = stack.credentials()["api_key"]
    base_url = json.loads((stack.state / "ragflow" / "provider.json").read_text())["openai_base_url"]
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    assert "auth-embed" in {m.id for m in client.models.list()}
    vectors = client.embeddings.create(model="auth-embed", input=["a panda eats bamboo", "stock markets fell"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384

    assert requests.get(f"{stack.base}/v1/models", timeout=10).status_code == 401  # no header at all
    no_key = requests.post(f"{stack.base}/v1/embeddings", json={"model": "auth-embed", "input": ["x"]}, timeout=10)
    assert no_key.status_code == 401
    with pytest.raises(AuthenticationError):  # RAGFlow's placeholder for "no key" is no key either
        OpenAI(base_url=base_url, api_key="x", max_retries=0).embeddings.create(model="auth-embed", input=["x"])


def test_verify_status_and_ragflow_use_the_key(stack: E2EStack):
    run = stack.run("verify", "--json")
    assert run.code == 0 and [c["ok"] for c in run.doc["checks"]] == [True], run.stderr
    run = stack.run("status", "--json")
    assert run.code == 0 and run.doc["server"]["alive"] is True
    assert {m["uid"]: m["live"] for m in run.doc["models"]} == {"auth-embed": "running"}

    run = stack.run("ragflow")
    assert run.code == 0 and f"API key:    {HIDDEN}" in run.stdout
    run = stack.run("ragflow", "--json")
    assert run.code == 0 and run.doc["ragflow"]["api_key"] == HIDDEN
    shown = stack.run("ragflow", "--show-key", may_show_secrets=True)
    assert shown.code == 0 and stack.credentials()["api_key"] in shown.stdout


def test_second_up_reuses_the_credentials(stack: E2EStack):
    before = stack.credentials()
    pid = stack.state_json()["server"]["pid"]
    run = stack.run("up", str(stack.manifest))
    assert run.code == 0, run.stderr
    assert "reusing the API key" in run.stderr and "first-run setup" not in run.stderr
    assert "auth-embed: keep" in run.stderr and stack.state_json()["server"]["pid"] == pid
    assert stack.credentials() == before
    run = stack.run("up", str(stack.manifest), "--json")
    assert run.code == 0 and run.doc["plan"]["server"] == "reuse" and run.doc["ragflow"]["api_key"] == HIDDEN
    assert {s["uid"]: s["action"] for s in run.doc["plan"]["steps"]} == {"auth-embed": "keep"}
    assert [c["ok"] for c in run.doc["checks"]] == [True]
    assert stack.credentials() == before


def test_endpoint_with_secrets_from_the_environment(stack: E2EStack):
    """server.endpoint + api_key_env + admin_password_env: the same server, reached as a stranger would."""
    credentials = stack.credentials()
    server = [f"endpoint: {stack.base}", "api_key_env: E2E_XINFERENCE_KEY",
              "admin_password_env: E2E_XINFERENCE_ADMIN_PASSWORD"]
    external = stack.write_manifest(stack.manifest_text("e2e-auth-external", tiny_embedding("auth-embed-external"),
                                                   server=server, local=False, tail=ONLY_EMBEDDING), "external.yml")
    state = stack.root / "state-external"

    run = stack.run("up", str(external), "--json", state=state)  # the variables are not set
    assert run.code == 1
    assert "E2E_XINFERENCE_KEY" in json.dumps(run.doc["errors"]) and "E2E_XINFERENCE_KEY" in run.stderr

    env = {**stack.env, "E2E_XINFERENCE_KEY": credentials["api_key"],
           "E2E_XINFERENCE_ADMIN_PASSWORD": credentials["password"]}
    run = stack.run("up", str(external), "--json", state=state, env=env)
    assert run.code == 0, run.stderr
    assert [c["ok"] for c in run.doc["checks"]] == [True]
    saved = json.loads((state / "state.json").read_text())["server"]
    assert saved["managed"] is False and saved["api_key_env"] == "E2E_XINFERENCE_KEY"
    assert credentials["api_key"] not in (state / "state.json").read_text()
    assert json.loads((state / "ragflow" / "provider.json").read_text())["api_key"] == credentials["api_key"]

    run = stack.run("down", "--json", state=state, env=env)
    assert run.code == 0 and run.doc["terminated"] == ["auth-embed-external"], run.stderr
    assert "left running" in run.doc["server"]
    live = requests.get(f"{stack.base}/v1/models", headers={"Authorization": f"Bearer {credentials['api_key']}"},
                        timeout=10).json()
    assert {m["id"] for m in live["data"]} == {"auth-embed"}  # ours is gone, the stack's own model is not


def test_up_after_down_reuses_the_credentials(stack: E2EStack):
    before = stack.credentials()
    assert stack.run("down", "--json").code == 0
    run = stack.run("up", str(stack.manifest))
    assert run.code == 0, run.stderr
    assert "starting xinference-local" in run.stderr and "reusing the API key" in run.stderr
    assert "Setup token:" not in (stack.state / "logs" / "server.log").read_text()  # no setup was needed
    assert stack.credentials() == before
    run = stack.run("verify", "--json")
    assert run.code == 0 and [c["ok"] for c in run.doc["checks"]] == [True]


def test_down_leaves_nothing_running(stack: E2EStack):
    server = stack.state_json()["server"]
    pid, pgid = server["pid"], server["pgid"]
    run = stack.run("down", "--json")
    assert run.code == 0 and run.doc["terminated"] == ["auth-embed"], run.stderr
    assert not pid_alive(pid) and group_members(pgid) == [] and port_free(stack.port)


def test_no_secret_was_ever_printed(stack: E2EStack):
    credentials = stack.credentials()
    assert len(stack.printed) >= 10
    for command, output in stack.printed:
        assert credentials["api_key"] not in output, f"`provision {command}` printed the API key"
        assert credentials["password"] not in output, f"`provision {command}` printed the admin password"
    # Nor is one written to a log or the state: only credentials.json and the RAGFlow files (0600) hold them.
    holders = {"credentials.json", "provider.json", "service_conf.user_default_llm.yaml"}
    for path in stack.state.rglob("*"):
        if path.is_file() and path.name not in holders:
            text = path.read_text(errors="replace")
            assert credentials["api_key"] not in text, f"{path} holds the API key"
            assert credentials["password"] not in text, f"{path} holds the admin password"
