"""The fault matrix, the state folder: damaged, hostile or shared folders. provision never follows a link
it did not make, never changes the mode of a folder it did not create, never shows a traceback for a
damaged file, and `down` acts on the state as it is under the lock.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from provision.commands.down import down
from provision.errors import StateError
from provision.state import ModelRecord, ServerRecord, State, StateDir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- defect 3: modes only on folders provision creates --------------------------------------------------

def test_a_new_state_folder_is_created_0700(tmp_path):
    state_dir = StateDir(tmp_path / "new" / "state")
    state_dir.write(State(manifest="m", name="t"))
    assert mode(state_dir.path) == 0o700
    assert mode(state_dir.logs) == 0o700 and mode(state_dir.ragflow_dir) == 0o700


def test_an_existing_folder_keeps_its_mode(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    StateDir(home).write(State(manifest="m", name="t"))
    assert mode(home) == 0o755  # a home, a project folder: not ours to change


@pytest.mark.parametrize("folder_mode", [0o1777, 0o777, 0o775])
def test_a_folder_others_may_write_is_refused(tmp_path, folder_mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, folder_mode)
    with pytest.raises(StateError, match="writable by other users") as info:
        StateDir(shared).write(State(manifest="m", name="t"))
    assert "--state-dir" in info.value.hint
    assert mode(shared) == folder_mode and not (shared / "state.json").exists()


def test_a_state_folder_that_is_a_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        StateDir(link).write(State(manifest="m", name="t"))
    assert list(target.iterdir()) == []


# -- defect 5: state files are opened without following links --------------------------------------------

def test_down_does_not_truncate_what_a_lock_link_points_to(tmp_path, invoke):
    state_dir = StateDir(tmp_path / "state")
    state_dir.write(State(manifest="m", name="t"))
    precious = tmp_path / "precious.txt"
    precious.write_text("do not lose me\n")
    (state_dir.path / "lock").unlink(missing_ok=True)
    (state_dir.path / "lock").symlink_to(precious)
    result = invoke(["--state-dir", state_dir.path, "down", "--json"])
    assert precious.read_text() == "do not lose me\n"
    assert result.exit_code == 1 and "symbolic link" in result.stdout + result.stderr
    assert json.loads(result.stdout)["errors"][0]["type"] == "StateError"


def test_a_state_file_that_is_a_link_is_not_read(tmp_path, invoke):
    state_dir = StateDir(tmp_path / "state")
    state_dir.write(State(manifest="m", name="t"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(State(manifest="other", name="other").to_json()))
    state_dir.state_file.unlink()
    state_dir.state_file.symlink_to(other)
    result = invoke(["--state-dir", state_dir.path, "status"])
    assert result.exit_code == 1 and "symbolic link" in result.stderr


# -- defect 7: every state file 0600, no secret option in it ---------------------------------------------

def test_state_json_is_0600_and_holds_no_secret_option(tmp_path):
    state_dir = StateDir(tmp_path / "state")
    payload = {"model_uid": "c", "model_name": "n", "api_key": "sk-live-0123456789abcdef", "hf_token": "hf_abcdefghijkl",
               "max_model_len": 8192}
    state_dir.write(State(manifest="m", name="t", models=[
        ModelRecord(role="chat", uid="c", model_type="LLM", status="running", payload=payload)]))
    assert mode(state_dir.state_file) == 0o600
    text = state_dir.state_file.read_text()
    assert "sk-live-0123456789abcdef" not in text and "hf_abcdefghijkl" not in text
    saved = json.loads(text)["models"][0]["payload"]
    assert saved["max_model_len"] == 8192 and saved["api_key"] == "(hidden)" and saved["hf_token"] == "(hidden)"


# -- defect 12: `down` reads the state under its lock ----------------------------------------------------

class UpFinishesFirst(StateDir):
    """A state folder where an `up` finishes (and writes its server) just before `down` gets the lock."""

    def __init__(self, path, late: State):
        super().__init__(path)
        self.late = late

    def lock(self, command):
        self.write(self.late)
        return super().lock(command)


def test_down_acts_on_the_state_written_before_it_got_the_lock(tmp_path):
    early = State(manifest="m", name="t")
    late = State(manifest="m", name="t", server=ServerRecord(url="http://127.0.0.1:9", managed=True, pid=None))
    state_dir = UpFinishesFirst(tmp_path / "state", late)
    StateDir(state_dir.path).write(early)
    result = down(state_dir)
    assert result.server == "not running"  # the late server was looked at, not lost
    assert StateDir(state_dir.path).read().server is None


# -- defect 20: a damaged state is an error with a message, never a traceback ----------------------------

DAMAGED = [
    pytest.param("[]", "not a JSON object", id="a-list"),
    pytest.param("null", "not a JSON object", id="null"),
    pytest.param('"x"', "not a JSON object", id="a-string"),
    pytest.param("{", "not JSON", id="cut-short"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "models": 5}', "models", id="models-a-number"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "models": [1]}', "models", id="a-model-a-number"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "server": "x"}', "server", id="server-a-string"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "server": {"url": 5, "managed": true}}', "server.url",
                 id="url-a-number"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "server": {"url": "file:///etc", "managed": false}}',
                 "server.url", id="url-not-http"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "server": {"url": "http://x:1", "managed": true, '
                 '"pid": "abc"}}', "server.pid", id="pid-a-string"),
    pytest.param('{"version": 1, "manifest": "m", "name": "t", "models": [{"uid": "a"}]}', "models[0]",
                 id="a-model-without-fields"),
]


@pytest.mark.parametrize("text, fragment", DAMAGED)
@pytest.mark.parametrize("command", ["status", "verify", "down", "ragflow"])
def test_a_damaged_state_is_reported(tmp_path, invoke, text, fragment, command):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "state.json").write_text(text)
    result = invoke(["--state-dir", state_dir, command])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    assert "state.json" in result.stderr and fragment in result.stderr, result.stderr
    result = invoke(["--state-dir", state_dir, command, "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["status"] == "error" and doc["errors"][0]["type"] == "StateError"


def test_up_json_holds_no_secret_option():
    """Defect 7, second half: the launch payload in `up --json` is the state's, secret options hidden."""
    from types import SimpleNamespace

    from provision import render
    from provision.plan import Plan

    payload = {"model_uid": "c", "model_name": "n", "api_key": "sk-live-0123456789abcdef", "max_model_len": 8192}
    state = State(manifest="m", name="t", models=[
        ModelRecord(role="chat", uid="c", model_type="LLM", status="running", payload=payload)])
    result = SimpleNamespace(state=state, plan=Plan(manifest="m", name="t", server="reuse", server_reason="", base_url=""),
                             checks=[], timings={}, files={}, paste="", provider=None, terminated=[],
                             earlier_server=None, ragflow_applied=None, ragflow_error=None)
    text, data = render.up(result)
    assert "sk-live-0123456789abcdef" not in json.dumps(data)
    assert data["models"][0]["payload"] == {**payload, "api_key": "(hidden)"}
