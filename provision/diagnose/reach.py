"""What provision reaches over the network: the hub (one small request, timed, with a deadline) and the
server's authentication (are the stored credentials still accepted?)."""

from __future__ import annotations

import os
import time
from typing import Mapping

import requests

from .. import auth, redact
from ..download import hub, model_folder_problem
from ..errors import AuthError, ProvisionError
from ..manifest import Manifest
from ..report import human_bytes
from ..runtime import procs
from ..state import ServerRecord, StateDir
from ..xinference import XinferenceClient
from .findings import Finding, blocker, ok, warning

HUB_DEADLINE_S = 10.0  # the one hub request doctor makes
SLOW_HUB_S = 5.0  # an answer slower than this is worth a warning
HF_DEFAULT = "https://huggingface.co"


def needs_download(manifest: Manifest) -> list[str]:
    """The uids whose first candidate still has to be downloaded."""
    uids = []
    for index, spec in enumerate(manifest.models):
        first = manifest.candidates(index)[0]
        if first.downloadable and (first.folder is None or model_folder_problem(first.folder) is not None):
            uids.append(spec.uid)
    return uids


def hub_findings(manifest: Manifest, *, deadline: float = HUB_DEADLINE_S,
                 environ: Mapping[str, str] | None = None) -> tuple[list[Finding], bool]:
    """(the findings, whether the hub answered) from one listing of one model the manifest downloads."""
    environ = os.environ if environ is None else environ
    spec = manifest.download
    if spec.hub == "none":
        return [ok("hub", "download.hub is none: local folders only")], False
    candidates = [c for i in range(len(manifest.models)) for c in manifest.candidates(i) if c.downloadable]
    if not candidates:
        return [ok("hub", "nothing to download: every model has its local_path")], False
    pending = needs_download(manifest)
    probe = next((c for c in candidates if c.uid in pending), candidates[0])
    deadline = min(deadline, spec.timeout)
    token = environ.get(spec.token_env) or None
    severity = blocker if pending else warning
    blocked = f"{', '.join(pending)} still {'have' if len(pending) > 1 else 'has'} to be downloaded" if pending else \
        "every first candidate's weights are on disk; a fallback's download would fail"
    started = time.monotonic()
    if spec.hub == "modelscope":
        endpoint = hub.resolve_endpoint(spec.endpoint, environ) or hub.DEFAULT_ENDPOINT
        where = redact.url(endpoint)
        try:
            files = hub.list_model_files(probe.source, probe.revision, endpoint=endpoint, token=token, deadline_s=deadline)
        except requests.HTTPError as exc:
            return [_refused(exc, where, probe.source, spec.token_env, token, severity, blocked)], False
        except hub.HubTimeout:
            return [severity("hub", f"{where} gave no complete answer within {deadline:g} s", blocked,
                             _UNREACHABLE)], False
        except (requests.ConnectionError, requests.Timeout) as exc:
            return [severity("hub", f"cannot reach {where}: {type(exc).__name__}", blocked, _UNREACHABLE)], False
        except (hub.BadListing, requests.RequestException, ValueError) as exc:
            return [severity("hub", f"{where} did not answer like a ModelScope hub: {str(exc)[:160]}", blocked,
                             "check download.endpoint")], False
        elapsed = time.monotonic() - started
        if not files:
            return [severity("hub", f"{where} lists no files for {probe.source}", blocked,
                             "check the source id (owner/name) and revision")], True
        size = human_bytes(sum(f.size for f in files))
        what = f"{where} listed {probe.source} in {elapsed:.2f} s ({len(files)} files, {size})"
    else:  # huggingface: the model's API page
        endpoint = (spec.endpoint or environ.get("HF_ENDPOINT") or HF_DEFAULT).rstrip("/")
        where = redact.url(endpoint)
        token = environ.get(spec.token_env) or environ.get("HF_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = requests.get(f"{endpoint}/api/models/{probe.source}", headers=headers,
                                    timeout=(min(5.0, deadline), deadline))
            response.raise_for_status()
        except requests.HTTPError as exc:
            return [_refused(exc, where, probe.source, spec.token_env, token, severity, blocked)], False
        except requests.RequestException as exc:
            return [severity("hub", f"cannot reach {where}: {type(exc).__name__}", blocked, _UNREACHABLE)], False
        elapsed = time.monotonic() - started
        what = f"{where} answered for {probe.source} in {elapsed:.2f} s"
    facts = {"endpoint": where, "model": probe.source, "seconds": round(elapsed, 3)}
    if elapsed > SLOW_HUB_S:
        return [warning("hub", what, "a hub this slow makes downloads slow, and listings may reach download.timeout",
                        "use a mirror nearer by (download.endpoint; `provision mirror serve` on the intranet)",
                        **facts)], True
    return [ok("hub", what, **facts)], True


_UNREACHABLE = ("check the network and proxy settings (HTTPS_PROXY), download.endpoint, or fetch the weights "
                "elsewhere and give local_path (`provision mirror serve` serves a folder of models)")


def _refused(exc: requests.HTTPError, where: str, source: str, token_env: str, token: str | None, severity,
             blocked: str) -> Finding:
    status = exc.response.status_code if exc.response is not None else None
    if status in (401, 403):
        fix = (f"${token_env} holds a token the hub refuses: renew it" if token
               else f"export {token_env}=<a hub token> (download.token_env)")
        return severity("hub", f"{where} refused the listing of {source} (HTTP {status})", blocked, fix)
    if status == 404:
        return severity("hub", f"{where} has no model {source} (HTTP 404)", blocked,
                        "check the source id (owner/name), or set download.endpoint to the hub that has it")
    return severity("hub", f"{where} answered HTTP {status} to the listing of {source}", blocked, _UNREACHABLE)


# -- authentication -----------------------------------------------------------------------------------


def server_record(manifest: Manifest | None, recorded: ServerRecord | None) -> ServerRecord | None:
    """The server `up` talks to: the manifest's server.endpoint, else the one the state recorded."""
    if manifest is not None and manifest.server.endpoint:
        return ServerRecord(url=manifest.server.endpoint, managed=False, **auth.server_record_fields(manifest))
    return recorded


def auth_findings(manifest: Manifest | None, state_dir: StateDir, record: ServerRecord | None) -> list[Finding]:
    """Whether authentication is set up, and whether the stored API key and admin login still work."""
    if record is None:
        on = manifest is None or manifest.server.auth
        return [ok("auth", "no server recorded yet: `up` " + ("sets up authentication when it starts one" if on
                                                                else "starts one without authentication"))]
    if record.managed and not record.auth:
        return [ok("auth", f"the server at {record.url} runs without authentication (server.auth: false)")]
    if record.managed and auth.load_credentials(state_dir, record.home or "") is None:
        where = auth.credentials_path(state_dir)
        return [blocker("auth", f"{where} holds no login for the server at {record.url}",
                        "the server has authentication on, and `up` cannot log in to launch models",
                        "if the server was set up from another state folder, use that --state-dir; otherwise stop "
                        "it (`provision down`), remove its auth folder under server.home, and run `provision up`")]
    alive = (procs.is_same_process(record) if record.managed else True) and \
        XinferenceClient(record.url).answers() is not None
    if not alive:
        return [ok("auth", f"the server at {record.url} is not running: the stored credentials were not tried")]
    found = []
    try:
        listed = auth.key_client(state_dir, record).list_models()
        found.append(ok("auth", f"the API key works ({len(listed)} models listed)"))
    except AuthError as exc:
        make = warning if record.managed else blocker
        found.append(make("auth", f"the API key is refused: {exc.message}",
                          "RAGFlow and `provision verify` call the models with it",
                          exc.hint or ("`provision up` mints a new one" if record.managed else "")))
    except ProvisionError as exc:
        found.append(warning("auth", f"the API key cannot be used: {exc.message}", fix=exc.hint or ""))
    if record.managed or record.admin_password_env:
        try:
            auth.admin_client(state_dir, record).list_models()
            found.append(ok("auth", "the admin login works (launching and terminating models)"))
        except AuthError as exc:
            found.append(blocker("auth", f"the admin login is refused: {exc.message}",
                                 "`up` launches and terminates models as the admin", exc.hint or ""))
        except ProvisionError as exc:
            found.append(blocker("auth", f"the admin login cannot be used: {exc.message}",
                                 "`up` launches and terminates models as the admin", exc.hint or ""))
    return found
