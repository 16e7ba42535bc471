"""Registering a provision stack in RAGFlow: reconcile, do not script.

apply() looks at what RAGFlow has (one read of each kind), compares it with the stack (a pure diff), makes
only the difference, then asks RAGFlow itself to check each model, alone, so each gets its own verdict:

  providers API (v0.26+)   provider Xinference (PUT once); ONE instance named desired.instance, created
                           by name only when missing (a second POST of the same name would make
                           `name(1)`), then PUT with the Base URL, key and exact model set (PUT removes
                           the models the stack no longer has); POST .../connection per model, with
                           instance_id so RAGFlow stores the verdict; PATCH /models/default per type
  llm_app (<= v0.25)       /v1/llm/add_llm per new or changed model (RAGFlow calls the model then),
                           add_llm verify:true for the others, delete_llm for the models at our Base URL
                           that left the stack; set_tenant_info for the defaults

The Base URL RAGFlow gets is the server root, without /v1 (chat and embedding add /v1, rerank uses
/v1/rerank, and discovery asks base + /v1/models, which /v1 would double). The key is never empty: RAGFlow's
chat and embedding clients refuse an empty key, so a stack without auth sends `x`, which RAGFlow's rerank
client treats as "no key". A default is set only for a model that passed RAGFlow's check, and the default
embedding model is not switched while datasets with chunks use another (the embedding guard).
"""

from __future__ import annotations

import re
from typing import Callable
from urllib.parse import urlsplit

from .api import RagflowClient
from .errors import RagflowError
from .calls import LLM_APP, PROVIDER, PROVIDERS, Call, calls, model_ref
from .diff import instance_differences, model_differences, removed_models
from .model import MODEL_TYPES, Desired, StackModel, check_desired, model_info, ragflow_base_url, ragflow_key, wanted_defaults
from .observed import LEGACY_DEFAULT_KEYS, Observed, observe
from .remedy import remedy
from .result import (
    VERIFIED,
    ApplyResult,
    DatasetUse,
    DefaultState,
    EmbeddingGuard,
    ModelCheck,
    ModelStatus,
    StatusResult,
    Step,
)

__all__ = ["StackModel", "Desired", "apply", "status", "remedy", "ragflow_base_url", "ApplyResult", "StatusResult"]

LEGACY_REQUIRED = ("tenant_id", "llm_id", "embd_id", "asr_id", "img2txt_id")  # set_tenant_info wants all




# -- apply --------------------------------------------------------------------------------------------


class _Run:
    """Makes the calls (or, in a dry run, only records them) and keeps the result's lists."""

    def __init__(self, client: RagflowClient, result: ApplyResult):
        self.client = client
        self.result = result

    def change(self, call: Call, action: str, target: str, reason: str) -> None:
        self.result.calls.append(call.shown())
        if not self.result.dry_run:
            self.client.send(call)
        self.result.steps.append(Step(action, target, reason, done=not self.result.dry_run))

    def record(self, call: Call) -> None:
        self.result.calls.append(call.shown())


def apply(client: RagflowClient, desired: Desired, *, dry_run: bool = False, switch_embedding: bool = False,
          warm: Callable[[StackModel], object] | None = None) -> ApplyResult:
    """Make RAGFlow use the stack; a second apply with nothing changed makes no change."""
    check_desired(desired)
    seen = observe(client, desired)
    base = ragflow_base_url(desired.base_url)
    result = ApplyResult(client.url, seen.version.text, seen.version.generation, desired.instance, base, dry_run)
    result.warnings.extend(_url_warnings(desired.base_url))
    run = _Run(client, result)
    if seen.version.legacy:
        checks = _apply_legacy(run, seen, desired, warm)
    else:
        checks = _apply_providers(run, seen, desired, warm)
    result.checks = checks
    if desired.set_defaults:
        _apply_defaults(run, seen, desired, switch_embedding)
    return result


def _apply_providers(run: _Run, seen: Observed, desired: Desired, warm) -> list[ModelCheck]:
    client, result = run.client, run.result
    base, key, name = ragflow_base_url(desired.base_url), ragflow_key(desired.api_key), desired.instance
    if not seen.has_provider:
        run.change(calls.put_provider(), "create", f"provider {PROVIDER}", "RAGFlow has no Xinference provider")
    if seen.leftovers:
        result.warnings.append(f"RAGFlow also has instance(s) {', '.join(seen.leftovers)}, left by a duplicate create "
                               "(not provision's doing?): delete them in RAGFlow if unused")
    info = model_info(desired)
    if seen.instance is None:
        run.change(calls.create_instance(name), "create", f"instance {name}", "RAGFlow has no such instance")
        run.change(calls.update_instance(name, instance_name=name, base_url=base, api_key=key, model_info=info),
                   "update", f"instance {name}", f"Base URL {base}, {len(info)} model(s)")
    else:
        reasons = instance_differences(seen, desired)
        if reasons:
            target = seen.instance.get("id") or name
            run.change(calls.update_instance(target, instance_name=name, base_url=base, api_key=key, model_info=info),
                       "update", f"instance {name}", "; ".join(reasons))
    for have in seen.models:
        if have.get("name") in {m.uid for m in desired.models} and have.get("status") not in (None, "active"):
            run.change(calls.patch_model(name, have["name"], status="active"), "activate", f"model {have['name']}",
                       f"it is {have.get('status')} in RAGFlow")

    instance_id, stored = (seen.instance or {}).get("id"), {m.get("name"): m for m in seen.models}
    if result.steps and not result.dry_run:  # the ids and verify states after the changes
        instance = client.get_instance(name) or {}
        instance_id = instance.get("id")
        stored = {m.get("name"): m for m in client.list_models(instance_id or name)}
    checks = []
    for model in desired.models:
        before = (stored.get(model.uid) or {}).get("verify")
        single = [{"model_name": model.uid, "model_type": [model.model_type]}]
        call = calls.verify(base, key, single, instance_id if before != VERIFIED else None)
        run.record(call)
        if result.dry_run:
            checks.append(ModelCheck(model.uid, model.model_type, None, "not checked (dry run)"))
            continue
        if warm is not None:
            warm(model)
        verdict = client.verify(base, key, single, instance_id if before != VERIFIED else None)
        after = VERIFIED if verdict.ok else before
        if not verdict.ok and before != "fail":  # RAGFlow stores only a success: store the failure too
            fail = calls.patch_model(instance_id or name, model.uid, extra={"verify": "fail"})
            run.record(fail)
            try:
                client.send(fail)
                after = "fail"
            except RagflowError as exc:
                result.warnings.append(f"could not store RAGFlow's failed check of {model.uid}: {exc.detail or exc}")
        checks.append(_check(model, verdict.ok, verdict.message, base, after))
    return checks


def _apply_legacy(run: _Run, seen: Observed, desired: Desired, warm) -> list[ModelCheck]:
    client, result = run.client, run.result
    base, key = ragflow_base_url(desired.base_url), ragflow_key(desired.api_key)
    result.warnings.append("RAGFlow <= 0.25 does not show a stored key: a changed key reaches RAGFlow only with "
                           "another change to the model (or after deleting the model in RAGFlow)")
    differences = model_differences(seen.models, desired, legacy_base=base)
    checks = []
    for model in desired.models:
        reasons = differences[model.uid]
        call = calls.add_llm(model.uid, model.model_type, base, key, model.max_tokens, verify=not reasons)
        if result.dry_run:
            if reasons:
                run.change(call, "create" if reasons == ["not in RAGFlow"] else "update", f"model {model.uid}",
                           "; ".join(reasons))
            else:
                run.record(call)
            checks.append(ModelCheck(model.uid, model.model_type, None, "not checked (dry run)"))
            continue
        if warm is not None:
            warm(model)  # add_llm calls the model at once
        run.record(call)
        verdict = client.add_llm(model.uid, model.model_type, base, key, model.max_tokens, verify=not reasons)
        if reasons and verdict.ok:
            action = "create" if reasons == ["not in RAGFlow"] else "update"
            result.steps.append(Step(action, f"model {model.uid}", "; ".join(reasons), done=True))
        elif reasons:
            result.warnings.append(f"model {model.uid} was not stored: RAGFlow <= 0.25 stores a model only when its "
                                   "check passes")
        checks.append(_check(model, verdict.ok, verdict.message, base, None))
    for name in removed_models(seen.models, desired, legacy_base=base):
        run.change(calls.delete_llm(name), "delete", f"model {name}", "at the stack's Base URL, not in the stack")
    return checks


def _check(model: StackModel, ok: bool, message: str, base: str, stored: str | None) -> ModelCheck:
    message = (message or "").strip()
    return ModelCheck(model.uid, model.model_type, ok, "" if ok else message,
                      None if ok else remedy(message, base), stored)


def _apply_defaults(run: _Run, seen: Observed, desired: Desired, switch_embedding: bool) -> None:
    result = run.result
    generation = seen.version.generation
    verdicts = {c.uid: c.ok for c in result.checks}
    wanted = wanted_defaults(desired)
    legacy_values: dict[str, str] = {}
    for model_type in MODEL_TYPES:
        current = seen.defaults.get(model_type)
        model = wanted.get(model_type)
        if model is None:
            result.defaults.append(DefaultState(model_type, None, current, "skipped", f"the stack has no {model_type} model"))
            continue
        ref = model_ref(model.uid, desired.instance, generation)
        if current == ref:
            result.defaults.append(DefaultState(model_type, ref, current, "unchanged"))
            continue
        if verdicts.get(model.uid) is False:
            result.defaults.append(DefaultState(model_type, ref, current, "held",
                                                f"RAGFlow's check of {model.uid} failed"))
            continue
        if model_type == "embedding":
            guard = _embedding_guard(run, seen, desired, model, ref, current, switch_embedding)
            result.embedding = guard
            if guard.held:
                result.defaults.append(DefaultState(model_type, ref, current, "held",
                                                    f"{len(guard.datasets)} dataset(s) with chunks use another "
                                                    "embedding model"))
                continue
            guard.switched = True
        state = DefaultState(model_type, ref, current, "set")
        result.defaults.append(state)
        if generation == PROVIDERS:
            run.change(calls.set_default(model_type, desired.instance, model.uid), "set", f"default {model_type}",
                       f"{current or '(none)'} -> {ref}")
        else:
            legacy_values[LEGACY_DEFAULT_KEYS[model_type]] = ref
            result.steps.append(Step("set", f"default {model_type}", f"{current or '(none)'} -> {ref}",
                                     done=not result.dry_run))
    if legacy_values:
        values = {k: seen.tenant.get(k) or "" for k in LEGACY_REQUIRED}
        values.update({k: seen.tenant.get(k) for k in ("rerank_id",) if seen.tenant.get(k)})
        values.update(legacy_values)
        call = calls.set_tenant_info(values, route=run.client.tenant_route or "api")
        run.record(call)
        if not result.dry_run:
            run.client.send(call)


def datasets_on_other_embedding(client: RagflowClient, desired: Desired, ref: str, generation: str) -> list[DatasetUse]:
    """The tenant's datasets with chunks embedded by another model than `ref`, with that model's dimensions where
    known (a model of the stack, else the catalog). `plan` shows them; apply holds the switch on them."""
    known = {model_ref(m.uid, desired.instance, generation): m.dimensions for m in desired.models}
    found = []
    for dataset in client.list_datasets():
        used = dataset.get("embedding_model") or ""
        if int(dataset.get("chunk_count") or 0) <= 0 or not used or used == ref:
            continue
        found.append(DatasetUse(str(dataset.get("id")), str(dataset.get("name")), int(dataset.get("chunk_count") or 0),
                                used, known.get(used) or desired.dimensions_of(used)))
    return found


def _embedding_guard(run: _Run, seen: Observed, desired: Desired, model: StackModel, ref: str, current: str | None,
                     switch: bool) -> EmbeddingGuard:
    client, result = run.client, run.result
    guard = EmbeddingGuard(current, ref, model.dimensions)
    guard.datasets = datasets_on_other_embedding(client, desired, ref, seen.version.generation)
    if not guard.datasets:
        return guard
    if not switch:
        guard.held = True
        return guard
    for use in guard.datasets:
        call = calls.check_embedding(use.id, ref)
        run.record(call)
        if result.dry_run:
            continue
        check = client.check_embedding(use.id, ref)
        use.check_code, use.check_message = check.code, check.message.strip()
        summary = check.data.get("summary") or {}
        if summary.get("avg_cos_sim") is not None:
            use.avg_cos_sim = float(summary["avg_cos_sim"])
        stored_dims = [r.get("vector_dim") for r in check.data.get("results") or [] if r.get("vector_dim")]
        if stored_dims:
            use.dimensions = int(stored_dims[0])
        mismatch = re.search(r"dimension \((\d+)\) of given embedding model is different from the original \((\d+)\)",
                             check.message)
        if mismatch:
            use.dimensions = int(mismatch.group(2))
            guard.wanted_dimensions = guard.wanted_dimensions or int(mismatch.group(1))
    return guard


def _url_warnings(url: str) -> list[str]:
    path = urlsplit(url or "").path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    if path:
        return [f"the Base URL has a path ({path}): RAGFlow's rerank client posts to /v1/rerank at the server root "
                "and drops it"]
    return []


# -- status -------------------------------------------------------------------------------------------


def status(client: RagflowClient, desired: Desired) -> StatusResult:
    """What RAGFlow has for this stack next to what the stack says, and the differences (reads only)."""
    seen = observe(client, desired)
    generation = seen.version.generation
    base = ragflow_base_url(desired.base_url)
    result = StatusResult(client.url, seen.version.text, generation, desired.instance, base,
                          instance_found=seen.instance is not None)
    legacy = generation == LLM_APP
    if not legacy:
        if not seen.has_provider:
            result.differences.append(f"RAGFlow has no {PROVIDER} provider")
        if seen.instance is None:
            result.differences.append(f"RAGFlow has no instance {desired.instance!r}")
        else:
            result.instance_base_url = seen.instance.get("base_url")
            result.key_matches = (seen.instance.get("api_key") or "") == ragflow_key(desired.api_key)
            result.differences.extend(d for d in instance_differences(seen, desired) if not d.startswith("model "))
        if seen.leftovers:
            result.warnings.append(f"RAGFlow also has instance(s) {', '.join(seen.leftovers)} (duplicates)")
    by_name = {m.get("name"): m for m in seen.models}
    differences = model_differences(seen.models, desired, legacy_base=base if legacy else None)
    for model in desired.models:
        have = by_name.get(model.uid)
        entry = ModelStatus(model.uid, model.model_type, model.max_tokens, have is not None)
        if have is not None:
            entry.stored_type = list(have.get("model_type") or [])
            entry.stored_max_tokens = have.get("max_tokens")
            entry.verify = have.get("verify")
            entry.status = have.get("status")
            if entry.status not in (None, "active"):
                result.differences.append(f"model {model.uid}: {entry.status} in RAGFlow")
            if not legacy and entry.verify != VERIFIED:
                result.warnings.append(f"model {model.uid}: RAGFlow's last check says {entry.verify or 'unknown'}")
        result.differences.extend(f"model {model.uid}: {r}" for r in differences[model.uid])
        result.models.append(entry)
    result.extra_models = removed_models(seen.models, desired, legacy_base=base if legacy else None)
    result.differences.extend(f"model {name}: in RAGFlow, not in the stack" for name in result.extra_models)
    if desired.set_defaults:
        for model_type, model in wanted_defaults(desired).items():
            ref = model_ref(model.uid, desired.instance, generation)
            current = seen.defaults.get(model_type)
            same = current == ref
            result.defaults.append(DefaultState(model_type, ref, current, "unchanged" if same else "differs"))
            if not same:
                result.differences.append(f"default {model_type}: {current or '(none)'}, expected {ref}")
    return result
