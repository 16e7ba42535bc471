"""RAGFlow's failures as provision errors: an answer with a non-zero code, a refused credential, a route
this version does not have."""

from __future__ import annotations

from ..errors import ProvisionError
from .calls import Verdict

class RagflowError(ProvisionError):
    """RAGFlow answered with a failure (code != 0, HTTP 401/404), an answer we cannot read, or not at all."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None,
                 path: str = "", detail: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status
        self.path = path
        self.detail = detail  # RAGFlow's own message, verbatim
        self.body: dict | None = None  # the whole envelope, when there was one

    def to_json(self) -> dict:
        return {**super().to_json(), "code": self.code, "status": self.status, "path": self.path,
                "detail": self.detail}


class RagflowAuthError(RagflowError):
    """RAGFlow refused the credential (HTTP 401, or a refused login): never retried."""


AUTH_CODES = (109, 401)  # AUTHENTICATION_ERROR (login: unknown email, wrong password); 401 in the envelope


def is_not_found(exc: RagflowError) -> bool:
    """The route does not exist on this RAGFlow (HTTP 404)."""
    return exc.status == 404


def failed_verdict(exc: RagflowError) -> Verdict:
    """RAGFlow's "this model does not work" as a verdict; what is no verdict (a refused credential, a route
    this RAGFlow lacks, no answer at all) is raised again."""
    if isinstance(exc, RagflowAuthError) or exc.code is None or exc.status == 404:
        raise exc
    return Verdict(False, (exc.detail or exc.message).strip())
