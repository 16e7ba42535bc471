"""provision.server with stand-in executables (small Python scripts written here), never the real xinference.

Each stand-in appends its PID (and its children's) to `pids` in its folder; the `reaper` fixture SIGKILLs,
by PID, any of them still alive after a test (checking the cmdline names this test's folder), and fails
the test when it had to. No timings are asserted beyond "did not wait for the whole deadline".
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.errors import ServerError
from provision.manifest import ServerSpec
from provision.runtime import procs, server
from provision.runtime.logs import log_tail
from provision.runtime.ports import check_port, port_in_use
from provision.runtime.procs import is_same_process
from provision.runtime.server import build_env, find_executable, server_alive, start_server, stop_server
from provision.state import ServerRecord
from support import cmdline, free_port, pid_alive

HEADER = """\
#!{python}
import os, pathlib, signal, subprocess, sys, time
folder = pathlib.Path(os.environ["STANDIN_DIR"])
def note(pid):
    with open(folder / "pids", "a") as f:
        f.write(f"{{pid}}\\n")
note(os.getpid())
host, port = sys.argv[sys.argv.index("--host") + 1], int(sys.argv[sys.argv.index("--port") + 1])
"""

SERVES_HTTP = """
import http.server
if {with_child}:
    # a child in the same process group that ignores SIGTERM, as a stuck model process would
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
           "open(sys.argv[1], 'w').write('ready'); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", code, str(folder / "child-ready")])
    note(child.pid)
    while not (folder / "child-ready").exists():
        time.sleep(0.02)
time.sleep(0.8)  # not up at once, so the progress callback runs

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{{"object": "list", "data": []}}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("Application startup complete.")
http.server.HTTPServer((host, port), Handler).serve_forever()
"""


@pytest.fixture()
def standin(reaper: Path):
    def make(body: str, **fmt) -> Path:
        script = reaper / "xinference-local"
        script.write_text(HEADER.format(python=sys.executable) + body.format(**fmt))
        script.chmod(0o755)
        return script

    return make


def spec_for(folder: Path, port: int | None = None, **kw) -> ServerSpec:
    return ServerSpec(host="127.0.0.1", port=port or free_port(), env={"STANDIN_DIR": str(folder)}, **kw)


def started_pids(folder: Path) -> list[int]:
    return [int(p) for p in (folder / "pids").read_text().split()]


# -- 1. the process exits early ---------------------------------------------------------------------


def test_early_exit_fails_fast_with_code_log_path_and_tail(standin, reaper: Path):
    exe = standin(
        'for i in range(1, 31):\n    print(f"line {{i}}")\nprint("boom: no module named torch", file=sys.stderr)\nsys.exit(7)\n'
    )
    log = reaper / "logs" / "server.log"
    began = time.monotonic()
    with pytest.raises(ServerError) as info:
        start_server(spec_for(reaper), reaper / "home", log, executable=exe, timeout=60)
    assert time.monotonic() - began < 30, "waited for the deadline instead of noticing the exit"
    message = info.value.message
    assert "exited with code 7" in message
    assert str(log) in message
    assert "boom: no module named torch" in message and "line 30" in message
    assert "line 11" not in message  # only the last 20 lines
    assert (reaper / "home").is_dir()


def test_early_exit_on_address_in_use_hints_at_the_port(standin, reaper: Path):
    exe = standin('print("[Errno 98] Address already in use")\nsys.exit(3)\n')
    with pytest.raises(ServerError) as info:
        start_server(spec_for(reaper), reaper / "home", reaper / "server.log", executable=exe, timeout=60)
    assert "code 3" in info.value.message
    assert "server.port" in info.value.hint and "server.endpoint" in info.value.hint


# -- 2. the port is taken ---------------------------------------------------------------------------


@pytest.mark.parametrize("held_on, asked_on", [("127.0.0.1", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")])
def test_taken_port_fails_before_starting(standin, reaper: Path, held_on: str, asked_on: str):
    exe = standin("time.sleep(60)\n")
    with socket.socket() as holder:
        holder.bind((held_on, 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use(asked_on, port)
        spec = ServerSpec(host=asked_on, port=port, env={"STANDIN_DIR": str(reaper)})
        with pytest.raises(ServerError) as info:
            start_server(spec, reaper / "home", reaper / "server.log", executable=exe, timeout=60)
    assert f"{asked_on}:{port}" in info.value.message
    assert "server.port" in info.value.hint and "server.endpoint" in info.value.hint
    assert not (reaper / "pids").exists(), "the executable ran although the port was taken"


def test_port_checks():
    port = free_port()
    assert not port_in_use("127.0.0.1", port)
    assert check_port("127.0.0.1", port) is False
    with pytest.raises(ServerError, match="cannot listen on 192.0.2.1"):
        port_in_use("192.0.2.1", port)  # TEST-NET: not an address of this machine


# -- 3. a server that answers; stop reaches the whole group -----------------------------------------


@pytest.mark.parametrize("with_child", [False, True], ids=["clean-sigterm", "child-ignores-sigterm"])
def test_start_identity_and_stop(standin, reaper: Path, with_child: bool):
    exe = standin(SERVES_HTTP, with_child=with_child)
    spec = spec_for(reaper)
    seen: list[float] = []
    early: list[ServerRecord] = []
    record = start_server(
        spec, reaper / "home", reaper / "server.log", executable=exe, timeout=60,
        on_progress=seen.append, on_started=lambda r: early.append(copy.copy(r)),
    )

    assert record.managed and record.url == f"http://127.0.0.1:{spec.port}"
    assert record.pid == started_pids(reaper)[0] and record.pgid == record.pid
    assert record.cmdline[-4:] == ["--host", "127.0.0.1", "--port", str(spec.port)] and str(exe) in record.cmdline
    assert record.create_time == procs.identity(record.pid)[1] and record.pgid == os.getpgid(record.pid)
    assert record.log == str(reaper / "server.log") and record.home == str(reaper / "home")
    assert seen and all(b >= a for a, b in zip(seen, seen[1:]))
    assert early == [record]  # handed over before it answered, already fully identified
    assert is_same_process(record) and server_alive(record)
    assert check_port("127.0.0.1", spec.port, record) is True  # our own server holds it: reuse
    with pytest.raises(ServerError, match="already in use"):
        check_port("127.0.0.1", spec.port)  # anyone else's: an error
    with pytest.raises(ServerError, match="started earlier on 127.0.0.1") as info:
        check_port("0.0.0.0", spec.port, record)  # ours, but not listening where the manifest now asks
    assert "provision down" in info.value.hint

    outcome = stop_server(record, grace=1)
    assert outcome.startswith("killed after 1 s" if with_child else "stopped in")
    assert not any(pid_alive(p) for p in started_pids(reaper))  # the child too: killpg, not kill
    assert len(started_pids(reaper)) == (2 if with_child else 1)
    assert not port_in_use("127.0.0.1", spec.port)
    assert not server_alive(record)
    assert stop_server(record) == "not running"


# -- 4. identity: another program under a recorded PID, or a dead PID -------------------------------


def test_identity_mismatch_and_dead_pid_are_left_alone():
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        while not cmdline(sleeper.pid):  # Popen can return while exec is still setting up the args
            time.sleep(0.01)
        record = ServerRecord(
            url="http://127.0.0.1:9", managed=True, pid=sleeper.pid, pgid=sleeper.pid,
            cmdline=cmdline(sleeper.pid), create_time=procs.identity(sleeper.pid)[1],
        )
        assert record.cmdline == ["sleep", "30"] and is_same_process(record)
        ticks = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        written_by_0_1 = ServerRecord(**{**record.__dict__, "create_time": None, "start_ticks": ticks})
        assert is_same_process(written_by_0_1)  # a state written before create_time was recorded

        other_cmdline = ServerRecord(**{**record.__dict__, "cmdline": ["sleep", "31"]})
        other_start = ServerRecord(**{**record.__dict__, "create_time": record.create_time - 1})
        for stranger in (other_cmdline, other_start):
            assert not is_same_process(stranger)
            assert stop_server(stranger) == f"pid {sleeper.pid} is now another program: left alone"
        unmanaged = ServerRecord(**{**record.__dict__, "managed": False})
        assert "left alone" in stop_server(unmanaged)
        assert sleeper.poll() is None, "a process we could not prove ours was signalled"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not is_same_process(record)
    assert stop_server(record) == "not running"
    assert stop_server(ServerRecord(url="http://127.0.0.1:9", managed=True)) == "not running"


# -- 5. the deadline --------------------------------------------------------------------------------


def test_deadline_raises_and_stops_what_it_started(standin, reaper: Path):
    exe = standin('print("loading a very slow thing", flush=True)\ntime.sleep(120)\n')
    log = reaper / "server.log"
    began = time.monotonic()
    with pytest.raises(ServerError) as info:
        start_server(spec_for(reaper), reaper / "home", log, executable=exe, timeout=1.5)
    assert time.monotonic() - began < 30
    assert "did not answer" in info.value.message and "within 1.5 s" in info.value.message
    assert str(log) in info.value.message and "loading a very slow thing" in info.value.message
    assert "start_timeout" in info.value.hint
    assert not any(pid_alive(p) for p in started_pids(reaper))


def test_a_failing_progress_callback_stops_the_server(standin, reaper: Path):
    exe = standin("time.sleep(120)\n")

    def interrupt(elapsed: float) -> None:
        if (reaper / "pids").exists():  # once it runs, so there is something to stop
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start_server(spec_for(reaper), reaper / "home", reaper / "server.log", executable=exe, timeout=60, on_progress=interrupt)
    assert not any(pid_alive(p) for p in started_pids(reaper))


# -- pure helpers -----------------------------------------------------------------------------------


def test_build_env(tmp_path: Path):
    spec = ServerSpec(env={"XINFERENCE_MAX_CONCURRENT_LAUNCHES": "2", "XINFERENCE_AUTH_ADVANCED": "1"})
    env = build_env(spec, tmp_path / "home", "modelscope", base={"PATH": "/bin"})
    assert env["XINFERENCE_HOME"] == str(tmp_path / "home")
    assert env["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "0"
    assert env["XINFERENCE_MODEL_SRC"] == "modelscope"
    assert env["XINFERENCE_MAX_CONCURRENT_LAUNCHES"] == "2" and env["PATH"] == "/bin"
    assert env["XINFERENCE_AUTH_ADVANCED"] == "1"  # the manifest's server.env has the last word
    env = build_env(ServerSpec(virtual_env=True, auth=False), tmp_path, "huggingface", base={"XINFERENCE_AUTH_ADVANCED": "1"})
    assert env["XINFERENCE_ENABLE_VIRTUAL_ENV"] == "1" and env["XINFERENCE_AUTH_ADVANCED"] == "0"
    assert build_env(ServerSpec(), tmp_path, base={"XINFERENCE_AUTH_ADVANCED": "0"})["XINFERENCE_AUTH_ADVANCED"] == "1"
    assert "XINFERENCE_MODEL_SRC" not in env


def test_missing_executable_names_the_server_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError) as info:
        find_executable()
    assert "xinference-local" in info.value.message and "server" in info.value.hint
    with pytest.raises(ServerError, match="not an executable"):
        find_executable(tmp_path / "nope")
    beside = tmp_path / server.EXECUTABLE
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    assert find_executable() == str(beside)


def test_log_tail(tmp_path: Path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 51)))
    assert log_tail(log).splitlines() == [f"line {i}" for i in range(31, 51)]
    assert log_tail(log, lines=2) == "line 49\nline 50"
    assert log_tail(tmp_path / "missing.log") == ""


def test_ports_of_a_stopped_server_are_waited_for_until_the_last_holder_lets_go():
    """A restart starts the new server only when the old one's ports are free: an exiting process of the old
    server can hold its listening socket for a moment after the leader is gone (seen with a cluster's
    supervisor after a worker was killed)."""
    import socket
    import threading

    from provision.runtime.ports import port_in_use, wait_until_free

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    assert wait_until_free([("127.0.0.1", port)], seconds=0.3) == [("127.0.0.1", port)]  # still held: said
    threading.Timer(0.5, holder.close).start()
    assert wait_until_free([("127.0.0.1", port), ("127.0.0.1", port)], seconds=10) == []
    assert not port_in_use("127.0.0.1", port)
