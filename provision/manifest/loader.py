"""Reading a manifest: file -> YAML with lines -> ${VAR} -> schema + checks -> `Manifest`, or one
`ManifestError` listing every problem found, each with the file, the line and the field path.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import ManifestError, Problem
from . import problems as problem_text
from .checks import check
from .interpolate import interpolate
from .schema import Manifest
from .source import duplicate_keys, line_index, type_word, underscore_numbers


def load(path: str | os.PathLike, *, environ: dict[str, str] | None = None) -> Manifest:
    """Read, interpolate, validate and check a manifest; raise ManifestError with every problem."""
    file = str(path)
    environ = dict(os.environ) if environ is None else environ
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(file, [Problem("", "file not found", hint="check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(file, [Problem("", f"cannot read the file: {exc}")]) from exc
    return parse(text, file=file, base_dir=Path(file).resolve().parent, environ=environ)


def parse(text: str, *, file: str = "<manifest>", base_dir: Path | None = None, environ: dict | None = None) -> Manifest:
    environ = dict(os.environ) if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and start.line + 1 != line:
            reason += f" ({context} that starts on line {start.line + 1})"  # e.g. an unclosed quote
        raise ManifestError(file, [Problem("", f"YAML syntax error: {reason}", line=line)]) from exc
    lines = line_index(root)
    if data is None:
        raise ManifestError(
            file, [Problem("", "the file is empty", hint="start from manifests/cpu-small.yml")]
        )
    if not isinstance(data, dict):
        raise ManifestError(
            file,
            [Problem("", f"the manifest must be a mapping of keys (version, name, models, ...), not a {type_word(data)}", line=1)],
        )
    problems: list[Problem] = underscore_numbers(root) + duplicate_keys(root)
    raw = data
    data = interpolate(data, (), environ, problems, lines)
    manifest = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems.extend(problem_text.from_validation(exc, lines))
    problems.extend(check(data, lines))
    if problems or manifest is None:
        problems.sort(key=lambda p: (p.line or 0))
        raise ManifestError(file, problem_text.dedupe(problems))
    manifest._file = file
    manifest._base_dir = base_dir or Path.cwd()
    manifest._raw = raw
    return manifest
