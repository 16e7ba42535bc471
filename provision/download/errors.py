"""Every library exception of a download becomes one HubError that names the model and says what to do."""

from __future__ import annotations

import errno
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import requests

from ..errors import HubError
from ..manifest import Candidate, DownloadSpec
from ..report import human_bytes
from . import hub



@dataclass
class HubContext:
    candidate: Candidate
    spec: DownloadSpec
    where: str  # the hub's address, for messages
    token_set: bool
    need: int | None = None  # bytes still to fetch, once known

    @property
    def who(self) -> str:
        return f"{who_of(self.candidate)} from {self.candidate.source}"

    def no_files(self) -> HubError:
        return HubError(
            f"{self.who}: the hub returned no files for {self.candidate.source} (at {self.where})",
            hint="the hub answered without an error but listed nothing (e.g. Success:false): check `source` "
            "and `revision`, and that download.endpoint is a ModelScope API",
        )


def who_of(c: Candidate) -> str:
    label = "" if c.position == 0 else f", {c.label}"
    return f"model {c.uid} ({c.role}{label})"


@contextmanager
def hub_errors(ctx: HubContext) -> Iterator[None]:
    try:
        yield
    except HubError:
        raise
    except Exception as exc:
        error = _translate(exc, ctx)
        if error is None:
            raise
        raise error from exc


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(errors: list[BaseException]) -> int | None:
    for e in errors:
        code = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _translate(exc: Exception, ctx: HubContext) -> HubError | None:
    c, who, where = ctx.candidate, ctx.who, ctx.where
    ms = sys.modules.get("modelscope_hub.errors")  # loaded if the exception can come from it
    failed: dict = getattr(exc, "failed_files", None) or {}
    errors = list(_chain(exc)) + [e for inner in failed.values() for e in _chain(inner)]
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    if failed:
        path, first = next(iter(failed.items()))
        detail = f"{path}: {(str(first).strip().splitlines() or [type(first).__name__])[0]}"
    status = _status(errors)

    if isinstance(exc, hub.BadListing):
        if "outside the model folder" in str(exc):
            return HubError(f"{who}: the hub at {where} sent a listing that would write outside the model folder: "
                            f"{exc}; nothing was downloaded",
                            hint="this hub cannot be trusted: check download.endpoint (an intranet mirror? a proxy?)")
        return HubError(f"{who}: {where} did not answer like a ModelScope hub ({exc}); nothing was downloaded",
                        hint="check download.endpoint: it must be the hub's base URL, e.g. http://mirror:8080")
    if isinstance(exc, hub.HubTimeout):
        return HubError(f"{who}: the hub at {where} timed out after {exc.seconds:g} s (no complete answer)",
                        hint="the hub answers too slowly or not at all: try again later, check download.endpoint "
                        "and the network (proxy, firewall), or raise download.timeout")
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in errors):
        need = f"; the download needs {human_bytes(ctx.need)}" if ctx.need else ""
        return HubError(f"{who}: the disk filled up while downloading into {c.folder}{need}",
                        hint="free space in download.models_dir (or point it at a bigger disk) and run again: "
                        "finished files are kept and partial ones resume")
    if ms and any(isinstance(e, ms.FileIntegrityError) for e in errors):
        return HubError(f"{who}: a file does not match the hub's listing ({detail})",
                        hint=f"the mirror's file differs from its listing (size or sha256): re-sync the mirror at "
                        f"{where}, or download from the official hub")
    if status in (401, 403):
        env = ctx.spec.token_env
        hint = (f"the token in {env} was refused or has no access to {c.source}: check it on the hub" if ctx.token_set
                else f"set the token in the environment variable {env} (download.token_env)")
        return HubError(f"{who}: the hub at {where} answered HTTP {status} (not authorized)", hint=hint)
    if status == 404 and failed:
        return HubError(f"{who}: the hub lists a file it does not serve ({detail})",
                        hint=f"the mirror at {where} is incomplete: re-sync it")
    if status == 404:
        return HubError(f"{who}: {c.source} (revision {c.revision or 'master'}) was not found at {where}",
                        hint="check `source` (the hub id, owner/name) and `revision`")
    if status == 429:
        return HubError(f"{who}: the hub at {where} is rate limiting requests (HTTP 429)", hint="wait and run again")
    unreachable = "check download.endpoint and the network (proxy, firewall); offline, set `download.hub: none` and use local folders"
    if status is not None and status >= 500:
        return HubError(f"{who}: the hub at {where} failed with HTTP {status}; it is unreachable or broken",
                        hint=f"try again later, or {unreachable}")
    if isinstance(exc, requests.TooManyRedirects):
        return HubError(f"{who}: the hub at {where} redirects in a loop", hint=unreachable)
    if any(isinstance(e, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout))
           or "Connect" in type(e).__name__ or "Timeout" in type(e).__name__ for e in errors):
        reason = re.search(r"\[Errno -?\d+\] [^\"')\n]+", detail)  # urllib3's text buries it
        return HubError(f"{who}: the hub at {where} is unreachable ({reason[0] if reason else detail})", hint=unreachable)
    if isinstance(exc, requests.JSONDecodeError):
        return HubError(f"{who}: {where} did not answer like a ModelScope hub (not JSON)",
                        hint="check download.endpoint: it must be the hub's base URL, e.g. http://mirror:8080")
    if isinstance(exc, OSError) and exc.errno is not None:
        return HubError(f"{who}: cannot write {c.folder}: {exc.strerror or exc}",
                        hint="check that download.models_dir is writable")
    if isinstance(exc, requests.RequestException) or (ms and isinstance(exc, ms.HubError)):
        return HubError(f"{who}: downloading {c.source} from {where} failed ({detail})",
                        hint="run again: finished files are kept and partial ones resume")
    return None
