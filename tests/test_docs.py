"""The README is the reference: every command and every manifest key must be documented there."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from provision.cli import cli
from provision.manifest import FallbackSpec, Manifest, ModelSpec

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def command_paths(group: click.Group, prefix: str = "provision") -> list[str]:
    paths = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            paths += command_paths(command, path)
        else:
            paths.append(path)
    return paths


def manifest_keys(model: type[BaseModel] = Manifest, prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        nested = info.annotation
        if nested is ModelSpec or name == "models":
            keys += manifest_keys(ModelSpec, f"{key}[].")
        elif name == "fallbacks":
            keys += [k for k in manifest_keys(FallbackSpec, f"{key}[].")]
        elif isinstance(nested, type) and issubclass(nested, BaseModel):
            keys += manifest_keys(nested, f"{key}.")
    return keys


@pytest.mark.parametrize("command", command_paths(cli))
def test_every_command_has_a_reference_section(command):
    assert f"### `{command}`" in README, f"README has no '### `{command}`' section"


# A fallback takes every key of a model entry but role and fallbacks; the README says so once.
FALLBACK_KEYS_DOCUMENTED_TOGETHER = "models[].fallbacks[]."


@pytest.mark.parametrize("key", [k for k in manifest_keys() if not k.startswith(FALLBACK_KEYS_DOCUMENTED_TOGETHER)])
def test_every_manifest_key_is_documented(key):
    assert f"`{key}`" in README, f"manifest key {key} is not in the README's manifest reference"


def test_fallback_keys_are_model_keys():
    model_keys = set(ModelSpec.model_fields) - {"role", "fallbacks"}
    assert set(FallbackSpec.model_fields) == model_keys


def test_quick_start_is_two_commands_that_exist():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip().split()[0] for line in section.splitlines() if line.startswith("    ./")]
    assert commands == ["./scripts/up", "./scripts/test"]
    root = Path(__file__).resolve().parent.parent
    for command in commands:
        assert (root / command).stat().st_mode & 0o111, f"{command} is not executable"
    assert "scripts/test" in (root / ".ci" / "run").read_text()
