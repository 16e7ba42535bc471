"""What RAGFlow has for the stack: one read of each kind (providers, the instance and its models, defaults;
on <= v0.25 the tenant's models and tenant_info)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .api import RagflowClient
from .calls import PROVIDER, Version
from .model import Desired

LEGACY_DEFAULT_KEYS = {"chat": "llm_id", "embedding": "embd_id", "rerank": "rerank_id"}


@dataclass
class Observed:
    version: Version
    has_provider: bool = False
    instance: dict | None = None  # with base_url and api_key (providers API)
    models: list[dict] = field(default_factory=list)  # {name, model_type: [..], max_tokens, status, verify}
    defaults: dict[str, str] = field(default_factory=dict)  # model_type -> model reference
    leftovers: list[str] = field(default_factory=list)  # instances `name(N)` left by duplicate creates
    tenant: dict = field(default_factory=dict)  # <= v0.25: tenant_info


def observe(client: RagflowClient, desired: Desired) -> Observed:
    version = client.version()
    seen = Observed(version)
    if version.legacy:
        seen.models = [_legacy_model(m) for m in client.my_llms()]
        seen.tenant = client.tenant_info()
        seen.defaults = {t: seen.tenant.get(k) for t, k in LEGACY_DEFAULT_KEYS.items() if seen.tenant.get(k)}
        return seen
    seen.has_provider = any(p.get("name") == PROVIDER for p in client.list_providers())
    if not seen.has_provider:
        return seen
    seen.instance = client.get_instance(desired.instance)
    if seen.instance is not None:
        seen.models = client.list_models(seen.instance.get("id") or desired.instance)
    pattern = re.compile(re.escape(desired.instance) + r"\(\d+\)$")
    seen.leftovers = [i["instance_name"] for i in client.list_instances() if pattern.match(i.get("instance_name", ""))]
    for entry in client.get_defaults():
        ref = "@".join(str(x) for x in (entry.get("model_name"), entry.get("model_instance"),
                                        entry.get("model_provider")) if x)
        seen.defaults[entry.get("model_type")] = ref
    return seen


def _legacy_model(entry: dict) -> dict:
    """my_llms' {name, type, api_base, max_tokens, status} in the providers API's shape."""
    status = entry.get("status")
    return {"name": entry.get("name"), "model_type": [entry.get("type")] if entry.get("type") else [],
            "max_tokens": entry.get("max_tokens"), "api_base": entry.get("api_base") or "",
            "status": "active" if str(status) in ("1", "active", "None") else "inactive", "verify": None}
