"""Reading a manifest: file -> YAML with lines -> ${VAR} -> schema + checks -> `Manifest`, or one
`ManifestError` listing every problem found, each with the file, the line and the field path.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from ..errors import ManifestError, Problem
from . import problems as problem_text
from .checks import check
from .interpolate import interpolate
from .schema import Manifest
from .source import duplicate_keys, line_index, read_text, read_yaml, type_word, underscore_numbers


def load(path: str | os.PathLike, *, environ: dict[str, str] | None = None) -> Manifest:
    """Read, interpolate, validate and check a manifest; raise ManifestError with every problem."""
    file = str(path)
    return parse(read_text(file), file=file, base_dir=Path(file).resolve().parent, environ=environ)


def parse(text: str, *, file: str = "<manifest>", base_dir: Path | None = None, environ: dict | None = None) -> Manifest:
    environ = dict(os.environ) if environ is None else environ
    root, data = read_yaml(text, file)
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
    resolved: dict[str, str] = {}  # what each ${VAR} became: never to be echoed back
    data = interpolate(data, (), environ, problems, lines, resolved)
    manifest = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems.extend(problem_text.from_validation(exc, lines, data))
    problems.extend(check(data, lines))
    if problems or manifest is None:
        problems.sort(key=lambda p: (p.line or 0))
        raise ManifestError(file, [problem_text.masked(p, resolved) for p in problem_text.dedupe(problems)])
    manifest._file = file
    manifest._base_dir = base_dir or Path.cwd()
    manifest._raw = raw
    manifest._lines = lines
    return manifest
