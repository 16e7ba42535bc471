"""The command line itself: every command documents an example, start-up stays light, errors render once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from provision.cli import cli

HEAVY = {"pydantic", "yaml", "requests", "modelscope", "torch", "xinference"}


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """(), ("validate",), ..., ("mirror",), ("mirror", "serve"): every group and command, recursively."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, prefix + (name,))
        else:
            paths.append(prefix + (name,))
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(("provision",) + p))
def test_help_exits_0_and_shows_an_example(invoke, path):
    result = invoke([*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.stdout
    assert "Example" in result.stdout, f"`{' '.join(('provision',) + path)} --help` has no Example: block"


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p in command_paths()}
    assert {"validate", "schema", "plan", "up", "status", "verify", "down", "ragflow", "mirror serve"} <= names


def imported_modules(stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    rows = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in rows[1:]}  # rows[0] is the header


def test_help_starts_without_heavy_imports(tmp_path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "provision", "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage: provision" in done.stdout
    modules = imported_modules(done.stderr)
    assert {"provision", "click"} <= modules  # the parse works
    assert not modules & HEAVY, f"`provision --help` imports {sorted(modules & HEAVY)}: import them inside the command"


def test_python_dash_m_provision(tmp_path):
    done = subprocess.run([sys.executable, "-m", "provision", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: provision ")


def test_console_script():
    script = Path(sys.executable).with_name("provision")
    if not script.exists():
        pytest.skip("no provision console script next to this interpreter")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "version" in done.stdout


def test_unknown_command_is_a_usage_error(invoke):
    result = invoke(["bogus"])
    assert result.exit_code == 2
    assert "No such command 'bogus'" in result.stderr or "No such command 'bogus'" in result.output


@pytest.fixture
def bad_manifest(tmp_path) -> Path:
    file = tmp_path / "bad.yml"
    file.write_text("version: 1\nname: x\nroles: {embedding: 0, rerank: 0}\nmodels:\n"
                    "  - role: chat\n    uid: c\n    name: n\n    source: a/b\n    engine: vllm\n    engin: vllm\n")
    return file


def test_validate_shows_no_traceback_by_default(invoke, bad_manifest):
    result = invoke(["validate", bad_manifest])
    out = result.stdout + result.stderr
    assert result.exit_code == 2
    assert "did you mean `engine`?" in out
    assert "Traceback" not in out


def test_debug_shows_the_traceback_of_a_manifest_error(invoke, bad_manifest):
    result = invoke(["--debug", "validate", bad_manifest])
    out = result.stdout + result.stderr
    assert result.exit_code == 2
    assert "did you mean `engine`?" in out
    assert "Traceback" in out and "ManifestError" in out


@pytest.fixture
def load_command(monkeypatch):
    """A throwaway command that only loads a manifest, so the group's single error handler is what renders."""

    @click.command("load-only")
    @click.argument("path")
    def load_only(path: str) -> None:
        from provision.manifest import load

        load(path)

    monkeypatch.setitem(cli.commands, "load-only", load_only)


@pytest.mark.parametrize("debug", [False, True])
def test_the_group_renders_a_manifest_error_once(invoke, load_command, bad_manifest, debug):
    result = invoke(["--debug"] * debug + ["load-only", bad_manifest])
    assert result.exit_code == 2
    assert result.stderr.count("error: ") == 1
    assert f"{bad_manifest}:10: models[0].engin: unknown key `engin` (did you mean `engine`?)" in result.stderr
    assert ("Traceback" in result.stderr) is debug


def test_an_unexpected_exception_is_called_a_bug(invoke, monkeypatch):
    @click.command("crash")
    def crash() -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.commands, "crash", crash)
    result = invoke(["crash"])
    assert result.exit_code == 1
    assert "unexpected RuntimeError: boom" in result.stderr and "this is a bug in provision" in result.stderr
