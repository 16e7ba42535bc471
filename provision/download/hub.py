"""ModelScope hub access without the hub client: the file listing (paths, sizes, sha256) over plain HTTP.

The listing is cheap (one JSON request) and tells us what a complete model folder looks like before
the heavy `modelscope` client is imported: fetch.py uses it to skip unchanged folders, to check
free disk space, and as the total for progress. Errors are left as `requests` exceptions; the caller,
which knows which model it is, turns them into `HubError`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote

import requests

from .. import retry

DEFAULT_ENDPOINT = "https://modelscope.cn"  # the client's own default (modelscope_hub.constants)
LISTING_TIMEOUT = (10, 30)  # (connect, read) seconds


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
    source: str, revision: str | None = None, *, endpoint: str | None = None, token: str | None = None
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
    for attempt in retry.policy(retry.no_answer_or_busy):  # transient failures only: no answer, 5xx, 429
        with attempt:
            response = requests.get(url, params=params, headers=headers, timeout=LISTING_TIMEOUT)
            response.raise_for_status()
    return _parse_listing(response.json())


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
        path = entry.get("Path") or entry.get("path") or entry.get("Name")
        if path:
            files.append(RepoFile(str(path), int(entry.get("Size") or 0), str(entry.get("Sha256") or "")))
    return files
