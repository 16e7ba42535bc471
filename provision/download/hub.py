"""ModelScope hub access without the hub client: the file listing (paths, sizes, sha256) over plain HTTP.

The listing is cheap (one JSON request) and tells us what a complete model folder looks like before
the heavy `modelscope` client is imported: fetch.py uses it to skip unchanged folders, to check
free disk space, and as the total for progress. Errors are left as `requests` exceptions (and the two
below); the caller, which knows which model it is, turns them into `HubError`s.

A hub is not trusted: every path of a listing must stay inside the model folder and every size be a
size, or the whole listing is refused before anything is fetched; the whole call, retries included,
has one deadline, so a hub that trickles or says nothing is "timed out", not waited for.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote

import requests

from .. import retry
from ..modelfiles import safe_relpath

DEFAULT_ENDPOINT = "https://modelscope.cn"  # the client's own default (modelscope_hub.constants)
LISTING_TIMEOUT = (10, 30)  # (connect, read) seconds for one request, within the deadline
LISTING_DEADLINE_S = 30.0  # the whole listing call, retries included
MAX_LISTING_BYTES = 64 << 20
MAX_FILE_BYTES = 1 << 50  # a file bigger than a PiB is no model file


class BadListing(ValueError):
    """The hub answered, but with no listing a model folder can be built from."""


class HubTimeout(requests.Timeout):
    """No complete answer within the call's deadline (args: the message, the deadline in seconds)."""

    @property
    def seconds(self) -> float:
        return self.args[1] if len(self.args) > 1 else LISTING_DEADLINE_S


@dataclass(frozen=True)
class RepoFile:
    """One file of a hub listing; sha256 is "" when the hub gives none."""

    path: str
    size: int
    sha256: str


def normalize_endpoint(url: str) -> str:
    """The client's rules: strip a trailing '/', and add https:// when there is no scheme."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"https://{url}"


def resolve_endpoint(configured: str | None, environ: Mapping[str, str]) -> str | None:
    """download.endpoint, else MODELSCOPE_ENDPOINT, else None (the client's default)."""
    url = configured or environ.get("MODELSCOPE_ENDPOINT")
    return normalize_endpoint(url) if url else None


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers the modelscope client sends with a token (reference/modelscope.md §3)."""
    if not token:
        return {}
    return {"Authorization": f"Bearer {token}", "Cookie": f"m_session_id={token}"}


def list_model_files(
    source: str, revision: str | None = None, *, endpoint: str | None = None, token: str | None = None,
    deadline_s: float | None = None,
) -> list[RepoFile]:
    """Every file (not folder) of model `source` at `revision` (default master).

    A hub that answers 200 with `Success: false` or an unexpected shape yields [] — the client treats
    that as success with an empty folder, so the caller must check. Raises `requests.HTTPError` (with
    `.response`) for error statuses, `requests.RequestException` when the hub cannot be reached, and
    `requests.JSONDecodeError` when the endpoint is not a hub API.
    """
    owner, name = source.split("/", 1)
    url = f"{normalize_endpoint(endpoint or DEFAULT_ENDPOINT)}/api/v1/models/{quote(owner)}/{quote(name)}/repo/files"
    params = {"Revision": revision or "master", "Recursive": "True"}
    headers = {"Content-Type": "application/json", **auth_headers(token)}
    limit = deadline_s or LISTING_DEADLINE_S
    deadline = time.monotonic() + limit
    try:
        for attempt in retry.policy(retry.no_answer_or_busy, within=limit):
            with attempt:  # transient failures only: no answer, 5xx, 429
                body = _get_within(url, params, headers, deadline)
    except requests.Timeout as exc:
        raise HubTimeout(f"no complete answer within {limit:g} s", limit) from exc
    return _parse_listing(body)


def _get_within(url: str, params: dict, headers: dict, deadline: float) -> Any:
    """GET and read the JSON body before `deadline` (each read is bounded too: a trickle cannot stretch it)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise requests.Timeout("the deadline passed")
    timeout = (min(LISTING_TIMEOUT[0], left), min(LISTING_TIMEOUT[1], left))
    with requests.get(url, params=params, headers=headers, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise requests.Timeout("the answer is still arriving")
            chunk = response.raw.read1(1 << 16, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_LISTING_BYTES:
                raise BadListing(f"the answer is larger than {MAX_LISTING_BYTES >> 20} MiB")
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except RecursionError:
        raise BadListing("the answer is nested too deeply") from None
    except ValueError:
        raise BadListing("the answer is not JSON") from None


def _parse_listing(body: object) -> list[RepoFile]:
    data = body.get("Data", body) if isinstance(body, dict) else body
    if isinstance(data, dict):
        data = data.get("Files") or data.get("files")
    if not isinstance(data, list):
        return []
    files = []
    for entry in data:
        if not isinstance(entry, dict) or entry.get("Type") == "tree":
            continue
        path = entry["Path"] if "Path" in entry else entry.get("path", entry.get("Name"))
        if not isinstance(path, str) or safe_relpath(path) is None:
            raise BadListing(f"it lists {str(path)[:120]!r}, a path outside the model folder (or no path)")
        size = entry.get("Size", 0)
        if size is None:
            size = 0
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            raise BadListing(f"it lists {path[:120]!r} with size {str(size)[:40]!r}, which is not a file size")
        files.append(RepoFile(path, size, str(entry.get("Sha256") or "")[:128]))
    return files
