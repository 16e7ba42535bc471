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
import subprocess
from pathlib import Path

import pytest
import requests
from e2e_support import HAVE_SERVER, PROVISION, cli_env, free_port, group_members, mirror_process, pid_alive, port_free, tear_down

pytestmark = pytest.mark.e2e

HIDDEN = "(hidden; --show-key to print)"

MANIFEST = """\
version: 1
name: e2e-auth
server:
  host: 127.0.0.1
  port: {port}
  home: {home}
  start_timeout: 300
download:
  hub: modelscope
  endpoint: {mirror}
  models_dir: {models}
models:
  - role: embedding
    uid: auth-embed
    name: bge-small-en-v1.5
    source: tiny/minilm-embed
    engine: sentence_transformers
roles: {{chat: 0, rerank: 0, embedding: 1}}
"""

EXTERNAL = """\
version: 1
name: e2e-auth-external
server:
  endpoint: http://127.0.0.1:{port}
  api_key_env: E2E_XINFERENCE_KEY
  admin_password_env: E2E_XINFERENCE_ADMIN_PASSWORD
download:
  hub: modelscope
  endpoint: {mirror}
  models_dir: {models}
models:
  - role: embedding
    uid: auth-embed-external
    name: bge-small-en-v1.5
    source: tiny/minilm-embed
    engine: sentence_transformers
roles: {{chat: 0, rerank: 0, embedding: 1}}
"""


class Run:
    """One CLI run: exit code, the JSON document (with --json), and everything it printed."""

    def __init__(self, code: int, doc: dict | None, stdout: str, stderr: str):
        self.code, self.doc, self.stdout, self.stderr = code, doc, stdout, stderr


class AuthStack:
    def __init__(self, root: Path, env: dict, port: int, mirror: str):
        self.root, self.env, self.port, self.mirror = root, env, port, mirror
        self.base = f"http://127.0.0.1:{port}"
        self.state = root / "state"
        self.manifest = root / "stack.yml"
        self.manifest.write_text(MANIFEST.format(port=port, home=root / "xinf-home", mirror=mirror, models=root / "models"))
        self.printed: list[tuple[str, str]] = []  # (command, output) of every run that must not show a secret
        self.pgids: set[int] = set()

    def run(self, *args: str, state: Path | None = None, env: dict | None = None, timeout: float = 900,
            may_show_secrets: bool = False) -> Run:
        proc = subprocess.run(
            [*PROVISION, "--state-dir", str(state or self.state), *args],
            env=env or self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout,
        )
        if not may_show_secrets:
            self.printed.append((" ".join(args), proc.stdout + proc.stderr))
        doc = None
        if "--json" in args:
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                pytest.fail(f"`provision {' '.join(args)}` printed no JSON:\n{proc.stdout}\n{proc.stderr}")
        server = self.state_json().get("server") if (self.state / "state.json").exists() else None
        if server and server.get("pgid"):
            self.pgids.add(server["pgid"])
        return Run(proc.returncode, doc, proc.stdout, proc.stderr)

    def state_json(self) -> dict:
        return json.loads((self.state / "state.json").read_text())

    def credentials(self) -> dict:
        entries = json.loads((self.state / "credentials.json").read_text())["servers"]
        assert list(entries) == [str(self.root / "xinf-home")]
        return entries[str(self.root / "xinf-home")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not HAVE_SERVER:
        pytest.skip("xinference is not installed (pip install -e '.[server]')")
    root = tmp_path_factory.mktemp("e2e-auth")
    env = cli_env(root, drop=("E2E_XINFERENCE_KEY", "E2E_XINFERENCE_ADMIN_PASSWORD"))
    stack = None
    try:
        with mirror_process(env) as mirror_url:
            stack = AuthStack(root, env, free_port(), mirror_url)
            yield stack
    finally:
        tear_down([root / "state"], env, root, stack.pgids if stack else ())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_sets_up_authentication(stack: AuthStack):
    run = stack.run("up", str(stack.manifest))  # the human output: progress lines on stderr, summary on stdout
    assert run.code == 0, f"up failed ({run.code}):\n{run.stderr}\n{run.stdout}"
    assert "first-run setup done" in run.stderr and "API key `provision-ragflow-" in run.stderr
    assert f"API key:    {HIDDEN}" in run.stdout
    assert "Setup token:" in (stack.state / "logs" / "server.log").read_text()  # the server needed its setup
    status = requests.get(f"{stack.base}/v1/admin/setup/status", timeout=10).json()
    assert status["needs_setup"] is False

    credentials = stack.credentials()
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


def test_the_key_is_required_and_works(stack: AuthStack):
    from openai import AuthenticationError, OpenAI

    key = stack.credentials()["api_key"]
    base_url = json.loads((stack.state / "ragflow" / "provider.json").read_text())["base_url"]
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    assert "auth-embed" in {m.id for m in client.models.list()}
    vectors = client.embeddings.create(model="auth-embed", input=["a panda eats bamboo", "stock markets fell"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 384

    assert requests.get(f"{stack.base}/v1/models", timeout=10).status_code == 401  # no header at all
    no_key = requests.post(f"{stack.base}/v1/embeddings", json={"model": "auth-embed", "input": ["x"]}, timeout=10)
    assert no_key.status_code == 401
    with pytest.raises(AuthenticationError):  # RAGFlow's placeholder for "no key" is no key either
        OpenAI(base_url=base_url, api_key="x", max_retries=0).embeddings.create(model="auth-embed", input=["x"])


def test_verify_status_and_ragflow_use_the_key(stack: AuthStack):
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


def test_second_up_reuses_the_credentials(stack: AuthStack):
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


def test_endpoint_with_secrets_from_the_environment(stack: AuthStack):
    """server.endpoint + api_key_env + admin_password_env: the same server, reached as a stranger would."""
    credentials = stack.credentials()
    external = stack.root / "external.yml"
    external.write_text(EXTERNAL.format(port=stack.port, mirror=stack.mirror, models=stack.root / "models"))
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


def test_up_after_down_reuses_the_credentials(stack: AuthStack):
    before = stack.credentials()
    assert stack.run("down", "--json").code == 0
    run = stack.run("up", str(stack.manifest))
    assert run.code == 0, run.stderr
    assert "starting xinference-local" in run.stderr and "reusing the API key" in run.stderr
    assert "Setup token:" not in (stack.state / "logs" / "server.log").read_text()  # no setup was needed
    assert stack.credentials() == before
    run = stack.run("verify", "--json")
    assert run.code == 0 and [c["ok"] for c in run.doc["checks"]] == [True]


def test_down_leaves_nothing_running(stack: AuthStack):
    server = stack.state_json()["server"]
    pid, pgid = server["pid"], server["pgid"]
    run = stack.run("down", "--json")
    assert run.code == 0 and run.doc["terminated"] == ["auth-embed"], run.stderr
    assert not pid_alive(pid) and group_members(pgid) == [] and port_free(stack.port)


def test_no_secret_was_ever_printed(stack: AuthStack):
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
