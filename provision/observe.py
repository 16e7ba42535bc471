"""Observe: the facts a plan depends on, gathered with I/O so that the plan (plan/) can stay pure.

Is the server from an earlier `up` still ours and alive, what does it run, which engines can it use,
which GPUs are there (NVML here, /v1/cluster/info for a remote server), what is on disk, how much disk
is free, and for `provision plan` the hub's listing of every downloadable candidate. A fact that
cannot be read is left unknown, and the plan says so.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import auth, download, placement, redact
from .catalog import Catalog, weights
from .catalog import sources as catalog_sources
from .download import hub
from .errors import AuthError, ProvisionError, XinferenceError
from .gpu import Gpu, NvmlSource, parse_cluster_info
from .manifest import Manifest
from .runtime import cluster, procs, server
from .state import ServerRecord, State, StateDir
from .xinference import XinferenceClient

PENDING_NO_SERVER = "no server answers yet; `up` asks it right after it starts"


@dataclass
class Observed:
    """Facts about the world the plan depends on, gathered by observe.observe()."""

    previous: State | None = None
    server_reusable: bool = False  # the recorded server is ours, alive, and answers
    server_moved: bool = False  # our recorded server is alive but the manifest now wants another one
    server_move_reason: str = ""
    running_uids: set[str] = field(default_factory=set)  # what that server reports in /v1/models
    # uid -> the instance status of a model the server lists that is not READY (its process died and Xinference
    # is restarting it, say): /v1/models keeps listing such a model for a while.
    not_ready: dict[str, str] = field(default_factory=dict)
    # uid -> one call of each model the server lists as running, as RAGFlow makes it (verify.py): READY is no
    # proof, a model whose process just died is listed for seconds after. `up` reports these as its checks.
    probes: dict[str, Any] = field(default_factory=dict)
    weight_facts: dict[Path, Any] = field(default_factory=dict)  # folder -> what its config says (catalog/weights)
    folders_with_model: set[Path] = field(default_factory=set)  # local folders that already hold weights
    gpus: list[Gpu] | None = None  # None: not known; []: none
    gpu_source: str = ""  # where the GPU facts came from ("NVML"), or why they are unknown
    # (model_type, name) -> the server's GET /v1/engines answer (None: it knows no engines for the name).
    # A missing key is a pending check; engines_pending says why.
    engines: dict[tuple[str, str], Any] = field(default_factory=dict)
    engines_pending: str = PENDING_NO_SERVER
    # (source, revision) -> the hub listing (objects with .path and .size), or why it could not be had
    listings: dict[tuple[str, str | None], list | str] = field(default_factory=dict)
    local_files: dict[Path, dict[str, int]] = field(default_factory=dict)  # folder -> relative path -> size
    disk_free: int | None = None  # free bytes where download.models_dir is
    workers: list[str] | None = None  # the cluster's worker addresses (None: not a cluster, or not known)
    workers_source: str = ""  # where they came from, or why they are unknown



def catalog_for(manifest: Manifest, state_dir: StateDir | None, previous: State | None = None) -> Catalog:
    """The catalog to check the manifest against: the server it targets when that answers (it knows the custom
    models registered on it), else the installed xinference, else provision's snapshot."""
    record = previous.server if previous else None
    if manifest.server.endpoint:
        record = ServerRecord(url=manifest.server.endpoint, managed=False, **auth.server_record_fields(manifest))
    elif record is not None and (record.url != manifest.server.url or (record.managed and not procs.is_same_process(record))):
        record = None
    if record is not None and XinferenceClient(record.url).answers(timeout=2) is not None:
        for client in _catalog_clients(state_dir, record):  # an API key may not read registrations: the admin can
            found = catalog_sources.from_server(client)
            if found is not None:
                return found
    local = catalog_sources.local()
    if manifest.server.endpoint:  # a server provision does not run may be of another version than the local catalog
        local = dataclasses.replace(local, authoritative=False, source=f"{local.source}; the server at "
                                    f"{redact.url(manifest.server.endpoint)} did not answer and may run another version")
    return local


def _catalog_clients(state_dir: StateDir | None, record: ServerRecord) -> list[XinferenceClient]:
    if state_dir is None:
        return [XinferenceClient(record.url)]
    clients = []
    for make in (auth.admin_client, auth.key_client):
        try:
            clients.append(make(state_dir, record))
        except ProvisionError:
            continue  # no such credentials here
    return clients


def observe(manifest: Manifest, previous: State | None, state_dir: StateDir | None = None, *,
            hub_listing: bool = False, probe: bool = False) -> Observed:
    """Gather the facts the plan needs: is our old server alive, what does it run and which engines can
    it use, the GPUs, what is on disk and the free space there; with hub_listing (`provision plan`), the
    hub's file listing of every downloadable candidate (one request each). Failures leave a fact unknown."""
    observed = Observed(previous=previous)
    record = previous.server if previous else None
    if manifest.server.endpoint:
        record = ServerRecord(url=manifest.server.endpoint, managed=False, **auth.server_record_fields(manifest))
    if record is not None:
        alive = server.server_alive(record) if record.managed else XinferenceClient(record.url).answers() is not None
        # A server started with the other server.auth setting, or another cluster layout, is restarted like one
        # that moved; so is a cluster one of whose workers is gone.
        move_reason = _move_reason(manifest, record) if alive else None
        if move_reason:
            observed.server_moved = record.managed
            observed.server_move_reason = move_reason
        elif alive:
            observed.server_reusable = True
            try:
                client = auth.key_client(state_dir, record) if state_dir else XinferenceClient(record.url)
                observed.running_uids = {m.get("id") for m in client.list_models()}
                _observe_instances(observed, client)
                if probe:
                    _probe(observed, client)
                _observe_server(manifest, observed, client, _admin_or_none(state_dir, record))
            except ProvisionError:
                observed.running_uids = set()
    if manifest.server.mode == "cluster" and not observed.server_reusable:
        observed.workers = manifest.server.worker_addresses  # `up` starts them and waits until all joined
        observed.workers_source = "the workers `up` starts (server.workers)"
    for index in range(len(manifest.models)):
        for candidate in manifest.candidates(index):
            if candidate.folder is not None and download.model_folder_problem(candidate.folder) is None:
                observed.folders_with_model.add(candidate.folder)
                if candidate.folder not in observed.weight_facts:
                    observed.weight_facts[candidate.folder] = weights.read_facts(candidate.folder)
    _observe_local(manifest, observed, hub_listing)
    return observed


def _move_reason(manifest: Manifest, record: ServerRecord) -> str | None:
    """Why the live recorded server is not the one the manifest wants (None: it is)."""
    if record.url != manifest.server.url:
        return "server.host/port changed"
    if not record.managed:
        return None
    spec = manifest.server
    if record.auth != spec.auth:
        return "server.auth changed"
    if (record.mode, [w.address for w in record.workers]) != (spec.mode, spec.worker_addresses) or (
            spec.mode == "cluster" and record.supervisor_port != spec.cluster_supervisor_port):
        return "server.mode/workers changed"
    gone = cluster.missing_workers(record)
    if gone:
        return f"cluster worker {gone[0].address} (pid {gone[0].pid}) is gone"
    return None


def _probe(observed: Observed, client: XinferenceClient) -> None:
    """Call each model the last `up` left running that the server still lists (in parallel)."""
    from .verify import verify_all

    records = [m for m in observed.previous.models if m.status == "running" and m.uid in observed.running_uids
               and m.uid not in observed.not_ready] if observed.previous else []
    observed.probes = {check.uid: check for check in verify_all(client, records)}


def _observe_instances(observed: Observed, client: XinferenceClient) -> None:
    """The instance status of each model the last `up` left running that the server lists."""
    previous = observed.previous.models if observed.previous else []
    # running and listed (it may have died since), or launching (an interrupted `up` asked for it)
    wanted = {m.uid for m in previous if (m.status == "running" and m.uid in observed.running_uids)
              or m.status == "launching"}
    for uid in sorted(wanted):
        try:
            instances = [i for i in client.instances(uid) if isinstance(i, dict) and i.get("model_uid") in (uid, None)]
        except ProvisionError:
            continue  # unknown: the listing decides
        status = str(instances[0].get("status") or "") if instances else ""
        if instances and status.upper() != "READY":
            replicas = [str(r.get("status")) for r in instances[0].get("replica_statuses") or [] if isinstance(r, dict)]
            observed.not_ready[uid] = status + (f" (replicas {', '.join(replicas)})" if replicas else "")


def _admin_or_none(state_dir: StateDir | None, record: ServerRecord) -> XinferenceClient | None:
    """The admin client where provision has an admin login (cluster info needs the admin scope)."""
    if state_dir is None:
        return None
    try:
        return auth.admin_client(state_dir, record)
    except ProvisionError:
        return None


def _observe_server(manifest: Manifest, observed: Observed, client: XinferenceClient,
                    admin: XinferenceClient | None = None) -> None:
    """From a server that answers: which engines it can use per model, and for server.endpoint its GPUs."""
    names = {(c.model_type, c.name) for i in range(len(manifest.models)) for c in manifest.candidates(i)}
    for key in sorted(names):
        try:
            observed.engines[key] = client.engines(*key)
        except XinferenceError as exc:
            if isinstance(exc, AuthError) or exc.status is None:  # the rest would fail alike: `up` asks again
                observed.engines_pending = f"GET /v1/engines failed: {exc.message}"
                break
            observed.engines[key] = None  # no such model, or no such endpoint: the launch decides
    if manifest.server.endpoint or manifest.server.mode == "cluster":
        # GPUs (of a server.endpoint; our own cluster's are this machine's, NVML) and the workers worker_ip may name.
        source = f"/v1/cluster/info of {client.base_url}"
        try:
            info = (admin or client).cluster_info(detailed=True)
            if manifest.server.endpoint:
                observed.gpus, observed.gpu_source = parse_cluster_info(info), source
            observed.workers, observed.workers_source = placement.worker_addresses(info), source
        except (ProvisionError, ValueError) as exc:  # ValueError: an answer that is not JSON
            failed = f"GET /v1/cluster/info failed: {getattr(exc, 'message', exc)}"
            observed.workers_source = failed
            if manifest.server.endpoint:
                observed.gpu_source = failed


def _observe_local(manifest: Manifest, observed: Observed, hub_listing: bool) -> None:
    """This machine's GPUs (NVML) for a server provision starts; local weight files, free disk, hub listings."""
    if not manifest.server.endpoint:
        visible = manifest.server.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        observed.gpus = NvmlSource(visible).gpus()
        observed.gpu_source = "NVML" + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
    elif not observed.gpu_source:
        observed.gpu_source = f"the server at {manifest.server.endpoint} does not answer"
    candidates = [c for i in range(len(manifest.models)) for c in manifest.candidates(i)]
    for c in candidates:
        if c.folder is not None and c.folder not in observed.local_files and c.folder.is_dir():
            observed.local_files[c.folder] = download.model_files(c.folder) if not c.downloadable else \
                {p: st.st_size for p, st in download.local_files(c.folder).items()}  # a download: every file
    models_dir = manifest.models_dir
    try:
        existing = next(p for p in (models_dir, *models_dir.parents) if p.exists())
        observed.disk_free = shutil.disk_usage(existing).free
    except (OSError, StopIteration):
        observed.disk_free = None
    keys = list(dict.fromkeys((c.source, c.revision) for c in candidates if c.downloadable))
    if not hub_listing or not keys:
        return
    if manifest.download.hub != "modelscope":
        observed.listings.update({key: f"only ModelScope listings are read, not {manifest.download.hub}" for key in keys})
        return
    endpoint = hub.resolve_endpoint(manifest.download.endpoint, os.environ)
    where = redact.url(endpoint or hub.DEFAULT_ENDPOINT)
    token = os.environ.get(manifest.download.token_env) or None
    with ThreadPoolExecutor(max_workers=min(8, len(keys)), thread_name_prefix="listing") as pool:
        futures = {key: pool.submit(hub.list_model_files, key[0], key[1], endpoint=endpoint, token=token,
                                    deadline_s=manifest.download.timeout) for key in keys}
    for key, future in futures.items():
        try:
            observed.listings[key] = future.result() or "the hub lists no files"
        except requests.HTTPError as exc:
            observed.listings[key] = f"HTTP {exc.response.status_code if exc.response is not None else '?'}"
        except hub.HubTimeout:
            observed.listings[key] = f"{where} timed out after {manifest.download.timeout:g} s"
        except (requests.ConnectionError, requests.Timeout):
            observed.listings[key] = f"cannot reach {where}"
        except hub.BadListing as exc:
            observed.listings[key] = f"{where} sent an unusable listing: {str(exc)[:160]}"
        except (requests.RequestException, ValueError) as exc:
            observed.listings[key] = f"{type(exc).__name__}: {redact.url(str(exc))[:120]}"


