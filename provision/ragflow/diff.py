"""The difference between what RAGFlow has and the stack (pure): what a PUT of the instance must change,
which stored models left the stack."""

from __future__ import annotations

from .model import Desired, ragflow_base_url, ragflow_key
from .observed import Observed
from .remedy import root_url


def model_differences(stored: list[dict], desired: Desired, *, legacy_base: str | None = None) -> dict[str, list[str]]:
    """uid -> what differs for each stack model (empty list: the same); "" -> models to remove."""
    by_name = {m.get("name"): m for m in stored}
    out: dict[str, list[str]] = {}
    for model in desired.models:
        have = by_name.get(model.uid)
        if have is None:
            out[model.uid] = ["not in RAGFlow"]
            continue
        reasons = []
        if list(have.get("model_type") or []) != [model.model_type]:
            reasons.append(f"type {'/'.join(have.get('model_type') or []) or '(none)'} -> {model.model_type}")
        if have.get("max_tokens") != model.max_tokens:
            reasons.append(f"max tokens {have.get('max_tokens')} -> {model.max_tokens}")
        if legacy_base is not None and root_url(have.get("api_base") or "") != legacy_base:
            reasons.append(f"Base URL {have.get('api_base') or '(none)'} -> {legacy_base}")
        out[model.uid] = reasons
    return out


def removed_models(stored: list[dict], desired: Desired, *, legacy_base: str | None = None) -> list[str]:
    """Stored models the stack no longer has (<= v0.25: only those at our Base URL are ours)."""
    wanted = {m.uid for m in desired.models}
    out = []
    for have in stored:
        if have.get("name") in wanted:
            continue
        if legacy_base is not None and root_url(have.get("api_base") or "") != legacy_base:
            continue
        out.append(have.get("name"))
    return out


def instance_differences(seen: Observed, desired: Desired) -> list[str]:
    """Why the instance needs a PUT (empty: it is as the stack says)."""
    base, key = ragflow_base_url(desired.base_url), ragflow_key(desired.api_key)
    inst = seen.instance or {}
    out = []
    if (inst.get("base_url") or "") != base:
        out.append(f"Base URL {inst.get('base_url') or '(none)'} -> {base}")
    if (inst.get("api_key") or "") != key:
        out.append("API key differs" if inst.get("api_key") else "no API key")
    for uid, reasons in model_differences(seen.models, desired).items():
        out.extend(f"model {uid}: {r}" for r in reasons)
    out.extend(f"model {name}: not in the stack" for name in removed_models(seen.models, desired))
    return out
