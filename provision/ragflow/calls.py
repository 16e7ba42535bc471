"""Every route and body provision sends to RAGFlow, in one place: the Call values apply makes and a dry run
shows, the two API generations (the providers API of v0.26 and later; add_llm / set_tenant_info of v0.25
and earlier) and how each names a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .. import redact

PROVIDER = "Xinference"
PROVIDERS = "providers"  # generation: v0.26 and later
LLM_APP = "llm_app"  # generation: v0.25 and earlier
FIRST_PROVIDERS_VERSION = (0, 26, 0)


@dataclass(frozen=True)
class Call:
    """One request: what apply makes, and what a dry run shows (secrets hidden by shown())."""

    method: str
    path: str
    body: dict | None = None
    params: dict | None = None
    slow: bool = False  # RAGFlow calls the models while answering (verify, discovery, embedding check)

    def shown(self) -> dict:
        out: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.params is not None:
            out["params"] = redact.secret_values(self.params)
        if self.body is not None:
            out["body"] = redact.secret_values(self.body)
        return out


@dataclass(frozen=True)
class Version:
    text: str  # as RAGFlow says it, e.g. "v0.27.0" or "unknown"
    number: tuple[int, int, int] | None
    generation: str  # PROVIDERS or LLM_APP

    @property
    def legacy(self) -> bool:
        return self.generation == LLM_APP


def parse_version(text: str) -> tuple[int, int, int] | None:
    """ "v0.27.0" -> (0, 27, 0); "v0.25.1-12-gabc" -> (0, 25, 1); "unknown" -> None."""
    import re

    match = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def model_ref(uid: str, instance: str, generation: str) -> str:
    """How RAGFlow names a model in defaults and datasets."""
    return f"{uid}@{PROVIDER}" if generation == LLM_APP else f"{uid}@{instance}@{PROVIDER}"


def segment(text: str) -> str:
    """A name or id as one URL path segment."""
    return quote(str(text), safe="")


# -- the calls (one home for every route and body) ----------------------------------------------------

P = f"/api/v1/providers/{PROVIDER}"


class calls:  # noqa: N801 - a namespace of Call builders
    @staticmethod
    def put_provider() -> Call:
        return Call("PUT", "/api/v1/providers", {"provider_name": PROVIDER})

    @staticmethod
    def create_instance(name: str) -> Call:
        """Name only: RAGFlow then creates an empty instance without calling any model."""
        return Call("POST", f"{P}/instances", {"instance_name": name})

    @staticmethod
    def create_instance_verified(name: str, base_url: str, api_key: str, model_info: list[dict]) -> Call:
        return Call("POST", f"{P}/instances", {"instance_name": name, "api_key": api_key, "base_url": base_url,
                                                "model_info": model_info}, slow=True)

    @staticmethod
    def update_instance(name_or_id: str, *, instance_name: str, base_url: str, api_key: str,
                        model_info: list[dict], verify: bool = False) -> Call:
        if not verify:
            # verify:false without an `extra` object in each entry fails in RAGFlow 0.27 with
            # "Internal server error" after it has half-applied the change (KeyError 'extra').
            model_info = [{**m, "extra": dict(m.get("extra") or {})} for m in model_info]
        return Call("PUT", f"{P}/instances/{segment(name_or_id)}",
                    {"instance_name": instance_name, "api_key": api_key, "base_url": base_url,
                     "model_info": model_info, "verify": verify}, slow=verify)

    @staticmethod
    def delete_instances(names: list[str]) -> Call:
        return Call("DELETE", f"{P}/instances", {"instances": list(names)})

    @staticmethod
    def add_model(instance: str, name: str, model_type: str, max_tokens: int) -> Call:
        return Call("POST", f"{P}/instances/{segment(instance)}/models",
                    {"model_name": name, "model_type": [model_type], "max_tokens": max_tokens})

    @staticmethod
    def delete_models(instance: str, names: list[str]) -> Call:
        return Call("DELETE", f"{P}/instances/{segment(instance)}/models", {"model_name": list(names)})

    @staticmethod
    def patch_model(instance: str, name: str, **fields: Any) -> Call:
        return Call("PATCH", f"{P}/instances/{segment(instance)}/models/{quote(name, safe='')}", dict(fields))

    @staticmethod
    def verify(base_url: str, api_key: str, model_info: list[dict], instance_id: str | None = None) -> Call:
        body: dict[str, Any] = {"api_key": api_key, "base_url": base_url, "model_info": model_info}
        if instance_id:
            body["instance_id"] = instance_id  # RAGFlow then writes the verdict into the stored model
        return Call("POST", f"{P}/connection", body, slow=True)

    @staticmethod
    def set_default(model_type: str, instance: str, model_name: str) -> Call:
        return Call("PATCH", "/api/v1/models/default", {"model_type": model_type, "model_provider": PROVIDER,
                                                        "model_instance": instance, "model_name": model_name})

    @staticmethod
    def clear_default(model_type: str) -> Call:
        return Call("PATCH", "/api/v1/models/default", {"model_type": model_type})

    @staticmethod
    def check_embedding(dataset_id: str, embd_id: str, check_num: int = 5, *, legacy_route: bool = False) -> Call:
        if legacy_route:  # <= v0.25.0: kb_app
            return Call("POST", "/v1/kb/check_embedding",
                        {"kb_id": dataset_id, "embd_id": embd_id, "check_num": check_num}, slow=True)
        return Call("POST", f"/api/v1/datasets/{segment(dataset_id)}/embedding/check",
                    {"embd_id": embd_id, "check_num": check_num}, slow=True)

    # <= v0.25

    @staticmethod
    def add_llm(name: str, model_type: str, api_base: str, api_key: str, max_tokens: int,
                verify: bool = False) -> Call:
        body: dict[str, Any] = {"llm_factory": PROVIDER, "llm_name": name, "model_type": model_type,
                                "api_base": api_base, "api_key": api_key, "max_tokens": max_tokens}
        if verify:
            body["verify"] = True  # v0.24+: check only, store nothing
        return Call("POST", "/v1/llm/add_llm", body, slow=True)

    @staticmethod
    def delete_llm(name: str) -> Call:
        return Call("POST", "/v1/llm/delete_llm", {"llm_factory": PROVIDER, "llm_name": name})

    @staticmethod
    def set_tenant_info(values: dict, *, route: str = "api") -> Call:
        """`values` must hold tenant_id, llm_id, embd_id, asr_id and img2txt_id (RAGFlow requires all five)."""
        if route == "v1":
            return Call("POST", "/v1/user/set_tenant_info", dict(values))
        return Call("PATCH", "/api/v1/users/me/models", dict(values))


# -- the client ---------------------------------------------------------------------------------------


# -- RAGFlow's answers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """RAGFlow's answer to "does this model work": ok, or its message (verbatim, leading newlines cut)."""

    ok: bool
    message: str = ""


@dataclass
class CheckResult:
    """RAGFlow's embedding check of one dataset against a candidate model."""

    code: int
    message: str = ""
    data: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == 0
