"""auth.py and the paths that carry secrets: the first-run setup against `responses` (no server), the
credential file, the clients' headers and messages, the manifest's access rules and security warnings,
and the CLI output that must never show a key or a password.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import responses
from responses import matchers

from provision import auth
from provision.auth import (
    admin_client,
    api_key_for,
    ensure_credentials,
    key_client,
    load_credentials,
    save_credentials,
    security_warnings,
    state_folder_warnings,
)
from provision.auth.clients import AuthClient
from provision.auth.credentials import Credentials
from provision.auth.setup import setup_tokens
from provision.commands.down import down
from provision.errors import AuthError, ManifestError, ServerError, StateError
from provision.manifest import load, parse
from provision.manifest.lint import secret_warnings
from provision.observe import observe
from provision.ragflow.config import HIDDEN_KEY
from provision.state import ModelRecord, ServerRecord, State, StateDir

URL = "http://xinf.test:9997"
KEY = "xf-AbCdEfGhIjKlMnOpQrStUvWx"
OLD_KEY = "xf-OldOldOldOldOldOldOld"
PASSWORD = "Stored-Password-1234567890"


def jwt(expires_in: float = 1800) -> str:
    """A token shaped like Xinference's (header.claims.signature); only `exp` is read."""
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "admin", "exp": time.time() + expires_in}).encode()).decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{claims.rstrip('=')}.c2ln"


@pytest.fixture
def state_dir(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "xinf-home"


def write_log(tmp_path: Path, *tokens: str) -> Path:
    log = tmp_path / "server.log"
    lines = ["INFO starting"]
    for token in tokens:
        lines += ["=" * 60, "  FIRST-RUN SETUP REQUIRED", f"  Setup token: {token}", "=" * 60]
    log.write_text("\n".join(lines) + "\n")
    return log


def write_auth_db(home: Path, token: str) -> None:
    (home / "auth").mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(home / "auth" / "auth.db") as db:
        db.execute("CREATE TABLE system_config (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO system_config VALUES ('setup_token', ?)", (token,))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def calls() -> list[tuple[str, str]]:
    return [(c.request.method, c.request.path_url) for c in responses.calls]


# -- the first-run setup ------------------------------------------------------------------------------


@responses.activate
def test_first_run_setup_sequence_and_payloads(tmp_path, state_dir, home):
    log = write_log(tmp_path, "tok-from-log")
    token = jwt()
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": True, "initialized": False, "password_min_length": 8})
    setup = responses.post(f"{URL}/v1/admin/setup", status=201, json={"id": 1, "username": "admin"})
    login = responses.post(f"{URL}/token", json={"access_token": token, "refresh_token": "r", "token_type": "bearer"})
    keys = responses.post(f"{URL}/v1/admin/keys", status=201, json={"id": 1, "key": KEY, "prefix": KEY[:7]},
                          match=[matchers.header_matcher({"Authorization": f"Bearer {token}"})])
    check = responses.get(f"{URL}/v1/models", json={"data": []},
                          match=[matchers.header_matcher({"Authorization": f"Bearer {KEY}"})])
    events = []

    credentials = ensure_credentials(URL, home, log, state_dir, on_event=events.append)

    assert calls() == [("GET", "/v1/admin/setup/status"), ("POST", "/v1/admin/setup"), ("POST", "/token"),
                       ("POST", "/v1/admin/keys"), ("GET", "/v1/models"),
                       ("GET", "/v1/admin/keys")]  # the keys it replaces, to revoke them (none on a new server)
    body = json.loads(setup.calls[0].request.body)
    assert body["setup_token"] == "tok-from-log" and body["username"] == "admin" and len(body["password"]) >= 24
    assert json.loads(login.calls[0].request.body) == {"username": "admin", "password": body["password"]}
    assert json.loads(keys.calls[0].request.body)["name"].startswith("provision-ragflow-")
    assert "Authorization" not in setup.calls[0].request.headers and check.call_count == 1
    assert (credentials.username, credentials.password, credentials.api_key) == ("admin", body["password"], KEY)
    assert load_credentials(state_dir, home) == credentials
    assert mode(auth.credentials_path(state_dir)) == 0o600 and mode(state_dir.path) == 0o700
    text = " ".join(events)
    assert "first-run setup done" in text and "minted" in text
    assert KEY not in text and body["password"] not in text


@responses.activate
def test_a_stale_log_token_falls_back_to_the_database(tmp_path, state_dir, home):
    log = write_log(tmp_path, "stale-token")
    write_auth_db(home, "db-token")
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": True, "password_min_length": 8})
    responses.post(f"{URL}/v1/admin/setup", status=403, json={"detail": "Invalid setup token."})
    responses.post(f"{URL}/v1/admin/setup", status=201, json={"id": 1, "username": "admin"})
    responses.post(f"{URL}/token", json={"access_token": jwt()})
    responses.post(f"{URL}/v1/admin/keys", status=201, json={"key": KEY})
    responses.get(f"{URL}/v1/models", json={"data": []})
    ensure_credentials(URL, home, log, state_dir)
    sent = [json.loads(c.request.body)["setup_token"] for c in responses.calls if c.request.path_url == "/v1/admin/setup"]
    assert sent == ["stale-token", "db-token"]


def test_setup_tokens_from_the_log_and_the_database(tmp_path, home):
    assert setup_tokens(write_log(tmp_path, "first", "second"), home) == ["second"]  # the last start's
    write_auth_db(home, "from-db")
    assert setup_tokens(tmp_path / "no-such.log", home) == ["from-db"]
    assert setup_tokens(write_log(tmp_path, "from-db"), home) == ["from-db"]  # once
    assert setup_tokens(None, tmp_path / "empty-home") == []


@responses.activate
def test_no_setup_token_anywhere_is_a_clear_error(tmp_path, state_dir, home):
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": True})
    with pytest.raises(ServerError, match="setup token is neither in"):
        ensure_credentials(URL, home, tmp_path / "server.log", state_dir)


@responses.activate
def test_a_server_without_setup_endpoint(tmp_path, state_dir, home):
    responses.get(f"{URL}/v1/admin/setup/status", status=404, json={"detail": "Not Found"})
    with pytest.raises(ServerError, match="authentication is off") as caught:
        ensure_credentials(URL, home, tmp_path / "server.log", state_dir)
    assert "server.auth: false" in caught.value.hint


# -- reuse and re-mint --------------------------------------------------------------------------------


def stored(state_dir: StateDir, home: Path, key: str = OLD_KEY) -> Credentials:
    credentials = Credentials("admin", PASSWORD, key, created_at=1.0, url=URL, home=str(home), key_name="old")
    save_credentials(state_dir, credentials)
    return credentials


@responses.activate
def test_a_working_key_is_reused(tmp_path, state_dir, home):
    before = stored(state_dir, home)
    responses.get(f"{URL}/v1/models", json={"data": []}, match=[matchers.header_matcher({"Authorization": f"Bearer {OLD_KEY}"})])
    events = []
    assert ensure_credentials(URL, home, tmp_path / "server.log", state_dir, on_event=events.append) == before
    assert calls() == [("GET", "/v1/models")] and "reusing" in events[0]


@responses.activate
def test_a_refused_key_is_replaced_with_the_stored_login(tmp_path, state_dir, home):
    stored(state_dir, home)
    responses.get(f"{URL}/v1/models", status=401, json={"detail": "Could not validate credentials"},
                  match=[matchers.header_matcher({"Authorization": f"Bearer {OLD_KEY}"})])
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": False})
    login = responses.post(f"{URL}/token", json={"access_token": jwt()})
    responses.post(f"{URL}/v1/admin/keys", status=201, json={"key": KEY})
    responses.get(f"{URL}/v1/models", json={"data": []}, match=[matchers.header_matcher({"Authorization": f"Bearer {KEY}"})])
    credentials = ensure_credentials(URL, home, tmp_path / "server.log", state_dir)
    assert json.loads(login.calls[0].request.body) == {"username": "admin", "password": PASSWORD}
    assert credentials.api_key == KEY and credentials.password == PASSWORD
    assert load_credentials(state_dir, home).api_key == KEY


@responses.activate
def test_a_server_set_up_elsewhere_names_the_way_out(tmp_path, state_dir, home):
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": False})
    with pytest.raises(AuthError, match="holds no login for it") as caught:
        ensure_credentials(URL, home, tmp_path / "server.log", state_dir)
    assert str(home / "auth") in caught.value.hint


@responses.activate
def test_a_refused_stored_password_is_not_printed(tmp_path, state_dir, home):
    stored(state_dir, home)
    responses.get(f"{URL}/v1/models", status=401, json={"detail": "Could not validate credentials"})
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": False})
    responses.post(f"{URL}/token", status=401, json={"detail": "Incorrect username or password"})
    with pytest.raises(AuthError) as caught:
        ensure_credentials(URL, home, tmp_path / "server.log", state_dir)
    assert "credentials.json" in caught.value.message and "Incorrect username or password" in caught.value.message
    assert PASSWORD not in caught.value.render() and OLD_KEY not in caught.value.render()
    assert len([c for c in responses.calls if c.request.path_url == "/token"]) == 1  # a refused secret is not retried


@responses.activate
def test_a_taken_key_name_gets_a_suffix(tmp_path, state_dir, home):
    stored(state_dir, home)
    responses.get(f"{URL}/v1/models", status=401, json={"detail": "no"})
    responses.get(f"{URL}/v1/admin/setup/status", json={"needs_setup": False})
    responses.post(f"{URL}/token", json={"access_token": jwt()})
    responses.post(f"{URL}/v1/admin/keys", status=409, json={"detail": "API key name already exists"})
    responses.post(f"{URL}/v1/admin/keys", status=201, json={"key": KEY})
    responses.get(f"{URL}/v1/models", json={"data": []})
    credentials = ensure_credentials(URL, home, tmp_path / "server.log", state_dir)
    names = [json.loads(c.request.body)["name"] for c in responses.calls
             if c.request.path_url == "/v1/admin/keys" and c.request.method == "POST"]
    assert len(names) == 2 and names[1].startswith(names[0] + "-") and credentials.key_name == names[1]


# -- the credential file ------------------------------------------------------------------------------


def test_credential_file_is_0600_and_keeps_one_entry_per_home(tmp_path, state_dir):
    first = Credentials("admin", "pw-one-1234567890", "xf-one", 1.0, URL, str(tmp_path / "a"))
    second = Credentials("admin", "pw-two-1234567890", "xf-two", 2.0, URL, str(tmp_path / "b"))
    path = save_credentials(state_dir, first)
    save_credentials(state_dir, second)
    assert mode(path) == 0o600 and mode(state_dir.path) == 0o700
    assert load_credentials(state_dir, tmp_path / "a") == first and load_credentials(state_dir, tmp_path / "b") == second
    assert load_credentials(state_dir, tmp_path / "c") is None
    assert "pw-one" not in repr(first) and "xf-one" not in repr(first)
    path.write_text("{not json")
    with pytest.raises(StateError, match="cannot read") as caught:
        load_credentials(state_dir, tmp_path / "a")
    assert "pw-" not in str(caught.value)


# -- clients ------------------------------------------------------------------------------------------


def managed(home: Path) -> ServerRecord:
    return ServerRecord(url=URL, managed=True, host="127.0.0.1", port=9997, home=str(home), auth=True)


def external(**fields) -> ServerRecord:
    return ServerRecord(url=URL, managed=False, **fields)


@responses.activate
@pytest.mark.parametrize("key", ["", "x"])
def test_no_header_for_an_empty_or_placeholder_key(key):
    responses.get(f"{URL}/v1/models", json={"data": []})
    AuthClient(URL, api_key=key).list_models()
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_the_key_client_sends_the_stored_key(state_dir, home):
    stored(state_dir, home, key=KEY)
    responses.get(f"{URL}/v1/models", json={"data": []}, match=[matchers.header_matcher({"Authorization": f"Bearer {KEY}"})])
    key_client(state_dir, managed(home)).list_models()
    assert api_key_for(state_dir, managed(home)) == KEY
    assert api_key_for(state_dir, ServerRecord(url=URL, managed=True, auth=False)) is None


def test_a_missing_key_variable_is_named(monkeypatch, state_dir):
    monkeypatch.delenv("MY_XINF_KEY", raising=False)
    with pytest.raises(AuthError, match="server.api_key_env names MY_XINF_KEY, which is not set") as caught:
        api_key_for(state_dir, external(api_key_env="MY_XINF_KEY"))
    assert "export MY_XINF_KEY=" in caught.value.hint


@responses.activate
def test_a_refused_key_from_the_environment_names_the_variable(monkeypatch, state_dir):
    monkeypatch.setenv("MY_XINF_KEY", KEY)
    responses.post(f"{URL}/v1/embeddings", status=401, json={"detail": "Could not validate credentials"})
    client = key_client(state_dir, external(api_key_env="MY_XINF_KEY"))
    with pytest.raises(AuthError) as caught:
        client.call("POST", "/v1/embeddings", json={})
    assert "MY_XINF_KEY" in caught.value.message and "export MY_XINF_KEY=" in caught.value.hint
    assert "MY_XINF_KEY" in caught.value.detail  # the launch chain's reason is built from the detail
    assert KEY not in caught.value.render()


@responses.activate
def test_a_key_cannot_launch_and_the_message_says_what_to_set(monkeypatch, state_dir):
    monkeypatch.setenv("MY_XINF_KEY", KEY)
    responses.post(f"{URL}/v1/models", status=403, json={"detail": "API keys can only access model query and inference endpoints"})
    client = admin_client(state_dir, external(api_key_env="MY_XINF_KEY"))  # no admin password: the key it is
    with pytest.raises(AuthError) as caught:
        client.launch({"model_uid": "m"})
    assert "server.admin_password_env" in caught.value.hint and caught.value.status == 403


@responses.activate
def test_a_server_asking_for_a_key_that_none_was_given(state_dir):
    responses.get(f"{URL}/v1/models", status=401, json={"detail": "Could not validate credentials"})
    with pytest.raises(AuthError) as caught:
        key_client(state_dir, external()).list_models()
    assert "server.api_key_env" in caught.value.hint


@responses.activate
def test_the_admin_client_logs_in_once_and_renews_before_expiry(monkeypatch, state_dir):
    monkeypatch.setenv("ADMIN_PW", PASSWORD)
    first, second = jwt(expires_in=60), jwt(expires_in=1800)  # the first is inside the renewal margin
    login = responses.post(f"{URL}/token", json={"access_token": first})
    responses.post(f"{URL}/token", json={"access_token": second})
    responses.delete(f"{URL}/v1/models/a", json=None, match=[matchers.header_matcher({"Authorization": f"Bearer {first}"})])
    responses.delete(f"{URL}/v1/models/b", json=None, match=[matchers.header_matcher({"Authorization": f"Bearer {second}"})])
    responses.delete(f"{URL}/v1/models/c", json=None, match=[matchers.header_matcher({"Authorization": f"Bearer {second}"})])
    client = admin_client(state_dir, external(admin_user="root", admin_password_env="ADMIN_PW"))
    assert client.terminate("a") and client.terminate("b") and client.terminate("c")
    assert json.loads(login.calls[0].request.body) == {"username": "root", "password": PASSWORD}
    assert [p for _, p in calls()] == ["/token", "/v1/models/a", "/token", "/v1/models/b", "/v1/models/c"]


def test_a_missing_admin_password_variable_is_named(monkeypatch, state_dir):
    monkeypatch.delenv("ADMIN_PW", raising=False)
    with pytest.raises(AuthError, match="server.admin_password_env names ADMIN_PW"):
        admin_client(state_dir, external(admin_password_env="ADMIN_PW"))


def test_down_on_an_endpoint_without_its_key_names_the_variable(monkeypatch, state_dir):
    monkeypatch.delenv("MY_XINF_KEY", raising=False)
    state = State(manifest="m.yml", name="t", server=external(api_key_env="MY_XINF_KEY"),
                  models=[ModelRecord(role="embedding", uid="emb", model_type="embedding", status="running")])
    state_dir.write(state)
    result = down(state_dir)
    assert result.exit_code == 1 and "MY_XINF_KEY" in result.errors[0]
    assert "left running" in result.server


# -- the manifest -------------------------------------------------------------------------------------

BASE = """
version: 1
name: t
roles: {{chat: 0, rerank: 0, embedding: 1}}
server:
{server}
models:
  - {{role: embedding, uid: emb, name: bge-m3, local_path: /m}}
"""


def manifest(server: str):
    return parse(BASE.format(server=server), file="stack.yml", environ={})


@pytest.mark.parametrize("server, fragment", [
    pytest.param("  host: 0.0.0.0\n  auth: false", "server.auth: server.auth: false with server.host 0.0.0.0 opens",
                 id="open-on-the-network"),
    pytest.param("  host: 10.1.2.3\n  auth: false\n  allow_open: false", "server.auth:", id="allow-open-false"),
    pytest.param("  api_key_env: XINF_KEY", "server.api_key_env: api_key_env applies only", id="key-without-endpoint"),
    pytest.param("  admin_password_env: PW", "server.admin_password_env: admin_password_env applies only",
                 id="password-without-endpoint"),
    pytest.param("  endpoint: http://h:1\n  api_key_env: xf-Secret-Key", "NAME of an environment variable",
                 id="a-key-instead-of-a-name"),
    pytest.param("  env: {XINFERENCE_AUTH_ADVANCED: '0'}", "server.env.XINFERENCE_AUTH_ADVANCED: authentication is set "
                 "with server.auth", id="auth-through-env"),
])
def test_manifest_access_rules(server, fragment):
    with pytest.raises(ManifestError) as caught:
        manifest(server)
    assert fragment in caught.value.render()


@pytest.mark.parametrize("server", [
    "  host: 0.0.0.0",  # auth on (the default)
    "  host: 0.0.0.0\n  auth: false\n  allow_open: true",
    "  host: 127.0.0.1\n  auth: false",
    "  host: localhost\n  auth: false",
    "  endpoint: http://10.0.0.5:9997\n  api_key_env: XINF_KEY\n  admin_password_env: XINF_PW",
])
def test_manifest_access_accepted(server):
    manifest(server)


def test_auth_is_on_by_default():
    spec = manifest("  port: 9997").server
    assert spec.auth is True and spec.allow_open is False and spec.api_key_env is None and spec.admin_user == "admin"


# -- security warnings --------------------------------------------------------------------------------


def test_secret_warnings_name_the_field_not_the_value():
    raw = {
        "server": {
            "env": {"HF_TOKEN": "hf_abcdefghijklmnopqrstu", "OTHER": "${OTHER}", "MAX_TOKENS": "8192",
                    "TOKEN_FILE": "/run/secrets/token", "SAFE": "${HF_TOKEN:-}"},
            "endpoint": "http://admin:hunter2hunter2@10.0.0.5:9997",
        },
        "download": {"token_env": "MODELSCOPE_API_TOKEN"},
        "models": [{"options": {"api_key": "sk-0123456789abcdef0123"}}, {"options": {"note": "xf-0123456789abcdef0123"}}],
    }
    warnings = secret_warnings(raw)
    assert len(warnings) == 4, warnings
    text = "\n".join(warnings)
    assert "server.env.HF_TOKEN" in text and "${HF_TOKEN}" in text
    assert "server.endpoint has a password in its URL" in text
    assert "models[0].options.api_key" in text and "models[1].options.note" in text
    for secret in ("hf_abcdefghijklmnopqrstu", "hunter2", "sk-0123456789abcdef0123", "xf-0123456789abcdef0123"):
        assert secret not in text


def test_security_warnings_of_a_manifest_file(tmp_path, state_dir):
    path = tmp_path / "stack.yml"
    path.write_text(BASE.format(server="  host: 0.0.0.0\n  auth: false\n  allow_open: true\n"
                                       "  env: {HF_TOKEN: hf_abcdefghijklmnopqrstu}"))
    state_dir.ensure()
    os.chmod(state_dir.path, 0o755)
    warnings = security_warnings(load(path, environ={}), state_dir)
    assert any("server.auth is false and server.host is 0.0.0.0" in w for w in warnings)
    assert any("server.env.HF_TOKEN" in w for w in warnings)
    assert any(f"chmod 700 {state_dir.path}" in w for w in warnings)
    assert len([w for w in warnings if "0.0.0.0" in w]) == 1  # one home for the exposure warning


def test_state_folder_warnings(state_dir):
    assert state_folder_warnings(state_dir) == []  # nothing there yet
    state_dir.ensure()
    assert state_folder_warnings(state_dir) == []
    secret = auth.credentials_path(state_dir)
    secret.write_text("{}")
    os.chmod(secret, 0o644)
    assert [w for w in state_folder_warnings(state_dir) if "chmod 600" in w and str(secret) in w]


def test_validate_prints_the_warnings(invoke, tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text(BASE.format(server="  env: {HF_TOKEN: hf_abcdefghijklmnopqrstu}"))
    result = invoke(["--state-dir", tmp_path / "state", "validate", path])
    assert result.exit_code == 0
    printed = result.stdout + result.stderr
    assert "warning: server.env.HF_TOKEN holds a secret" in printed and "hf_abc" not in printed
    result = invoke(["--state-dir", tmp_path / "state", "validate", path, "--json"])
    assert "server.env.HF_TOKEN" in json.loads(result.stdout)["manifests"][0]["warnings"][0]


# -- observing a server started with the other auth setting -------------------------------------------


def test_a_server_started_without_auth_is_restarted(monkeypatch, tmp_path, state_dir):
    from provision.runtime import server

    monkeypatch.setattr(server, "server_alive", lambda record: True)
    spec = manifest("  port: 9997")
    previous = State(manifest="m", name="t", server=ServerRecord(url="http://127.0.0.1:9997", managed=True, auth=False))
    observed = observe(spec, previous, state_dir)
    assert observed.server_moved and not observed.server_reusable


# -- nothing secret in what the CLI prints ------------------------------------------------------------


@pytest.fixture
def up_state(state_dir, home) -> StateDir:
    """A state as `up` leaves it for a server with authentication (no server needed to read it)."""
    record = managed(home)
    state_dir.write(State(manifest="m.yml", name="t", server=record,
                          models=[ModelRecord(role="embedding", uid="emb", model_type="embedding", status="running")]))
    save_credentials(state_dir, Credentials("admin", PASSWORD, KEY, 1.0, URL, str(home)))
    return state_dir


@pytest.fixture
def in_state(invoke):
    """The CLI on a state folder: in_state(state_dir, *args)."""
    return lambda state_dir, *args: invoke(["--state-dir", state_dir.path, *args])


def test_ragflow_hides_the_key_unless_asked(in_state, up_state):
    for args in (["ragflow"], ["ragflow", "--json"], ["ragflow", "--docker"]):
        result = in_state(up_state, *args)
        assert result.exit_code == 0, result.output
        assert KEY not in result.output and PASSWORD not in result.output
        assert HIDDEN_KEY in result.output
    shown = in_state(up_state, "ragflow", "--show-key")
    assert shown.exit_code == 0 and f"API key:    {KEY}" in shown.output and PASSWORD not in shown.output


@responses.activate
@pytest.mark.parametrize("status", [200, 401])
def test_verify_and_status_output_hold_no_secret(in_state, up_state, status):
    vectors = {"data": [{"index": i, "embedding": [float(i), 1.0, 0.5]} for i in range(3)]}
    body = vectors if status == 200 else {"detail": "Could not validate credentials"}
    verify_call = responses.post(f"{URL}/v1/embeddings", status=status, json=body)
    responses.get(f"{URL}/v1/models", status=status, json={"data": [{"id": "emb"}]} if status == 200 else body)
    for args in (["verify", "--json"], ["verify"], ["status", "--json"]):
        result = in_state(up_state, *args)
        assert KEY not in result.output and PASSWORD not in result.output, args
    assert verify_call.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"  # as RAGFlow sends it
    if status == 401:
        result = in_state(up_state, "verify", "--json")
        assert result.exit_code == 1 and "provision up" in json.dumps(json.loads(result.stdout)["errors"])
