"""The declarative manifest: schema, YAML with line numbers, ${VAR}, checks, fallback chains, lint.

`load(path)` returns a `Manifest` or raises one `ManifestError` listing every problem found, each with
the file, the line where known, the field path (`models[1].fallbacks[0].engine`) and what is allowed.
`Manifest.candidates(i)` resolves a model's fallback chain into fully specified `Candidate`s.
"""

from ..catalog.model import size_to_wire
from .candidates import Candidate
from .lint import manifest_warnings
from .loader import load, parse
from .schema import DownloadSpec, FallbackSpec, Manifest, ModelSpec, RagflowSpec, ServerSpec, json_schema
from .source import format_path

__all__ = [
    "Candidate", "DownloadSpec", "FallbackSpec", "Manifest", "ModelSpec", "RagflowSpec", "ServerSpec",
    "format_path", "json_schema", "load", "manifest_warnings", "parse", "size_to_wire",
]
