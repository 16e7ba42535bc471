"""Errors of `provision`: one root class, rendered once by the CLI.

    ProvisionError            exit 1 unless a subclass says otherwise; message + optional hint
    ├── UsageError            exit 2: a bad command line or a state folder we cannot use
    ├── ManifestError         exit 2: every problem found in one manifest, with file, line and field path
    ├── StateError            the state folder is locked, missing or unreadable
    ├── HubError              a download failed (not found, auth, unreachable, integrity, disk)
    ├── ServerError           xinference-local would not start, died, or the port is taken
    ├── XinferenceError       the REST API answered with an error (status + detail)
    │   └── AuthError         401/403: the chain stops, no candidate can help
    ├── LaunchError           a model's fallback chain was exhausted (carries the attempts)
    └── VerifyError           an endpoint answered, but not like a working model

Library exceptions are turned into these with `raise ... from exc` at the edge that calls the library,
so a command never shows a bare traceback (`--debug` shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class ProvisionError(Exception):
    """Root of every error `provision` reports to a person."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint}


class UsageError(ProvisionError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where it is, what is wrong, what is allowed."""

    path: str  # field path such as models[1].fallbacks[0].engine ("" for the whole file)
    message: str
    line: int | None = None
    hint: str | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        field = f" {self.path}:" if self.path else ""
        text = f"{where}:{field} {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_json(self) -> dict:
        return {"path": self.path, "line": self.line, "message": self.message, "hint": self.hint}


class ManifestError(ProvisionError):
    exit_code = EXIT_USAGE

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        count = len(problems)
        head = f"{file}: {count} problem{'s' if count != 1 else ''} in the manifest"
        super().__init__(head + "".join("\n  " + p.render(file) for p in problems))

    def to_json(self) -> dict:
        data = super().to_json()
        data["file"] = self.file
        data["problems"] = [p.to_json() for p in self.problems]
        return data


class StateError(ProvisionError):
    pass


class HubError(ProvisionError):
    pass


class ServerError(ProvisionError):
    pass


class XinferenceError(ProvisionError):
    """The Xinference REST API answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.detail = detail


class AuthError(XinferenceError):
    pass


class LaunchError(ProvisionError):
    pass


class VerifyError(ProvisionError):
    pass
