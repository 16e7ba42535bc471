"""The client's reads and writes beyond the providers API: the tenant's datasets and RAGFlow's embedding
check, and the routes of RAGFlow 0.25 and earlier (add_llm, my_llms, tenant_info). Mixed into
RagflowClient (api.py), which gives send/get/envelope."""

from __future__ import annotations

from .calls import PROVIDER, CheckResult, Verdict, calls
from .errors import RagflowAuthError, RagflowError, failed_verdict, is_not_found


class DatasetRoutes:
    def list_datasets(self, page_size: int = 100) -> list[dict]:
        """Every dataset of the user: [{id, name, embedding_model, chunk_count, document_count, ...}]."""
        out: list[dict] = []
        page = 1
        while True:
            batch = self.get("/api/v1/datasets", {"page": page, "page_size": page_size}) or []
            out.extend(batch)
            if len(batch) < page_size or page >= 1000:
                return out
            page += 1

    def check_embedding(self, dataset_id: str, embd_id: str, check_num: int = 5) -> CheckResult:
        """RAGFlow's comparison of the dataset's stored vectors with embd_id's: code 0 (compatible),
        10 (similarity below 0.9) or 102 (another dimension, no chunks, the model failed). The route is
        /api/v1/datasets/<id>/embedding/check from v0.25.2, /v1/kb/check_embedding before."""
        for legacy_route in (False, True):
            try:
                body = self.envelope(calls.check_embedding(dataset_id, embd_id, check_num,
                                                           legacy_route=legacy_route))
            except RagflowAuthError:
                raise
            except RagflowError as exc:
                if is_not_found(exc) and not legacy_route:
                    continue
                if exc.code is None or is_not_found(exc):
                    raise
                data = (exc.body or {}).get("data")
                return CheckResult(exc.code, exc.detail, data if isinstance(data, dict) else {})
            return CheckResult(0, body.get("message") or "", body.get("data") or {})
        raise AssertionError("unreachable")


class LegacyRoutes:
    tenant_route: str | None

    def add_llm(self, name: str, model_type: str, api_base: str, api_key: str, max_tokens: int,
                verify: bool = False) -> Verdict:
        """Adds (or updates) one model; RAGFlow calls it first and stores nothing when it fails. With
        verify=True (v0.24+) it only checks."""
        try:
            data = self.send(calls.add_llm(name, model_type, api_base, api_key, max_tokens, verify=verify))
        except RagflowError as exc:
            return failed_verdict(exc)
        if verify and isinstance(data, dict) and "success" in data:
            return Verdict(bool(data.get("success")), str(data.get("message") or "").strip())
        return Verdict(True)

    def my_llms(self) -> list[dict]:
        """The tenant's Xinference models: [{id, type, name, api_base, max_tokens, status}] (no key)."""
        data = self.get("/v1/llm/my_llms", {"include_details": "true"}) or {}
        entry = data.get(PROVIDER) if isinstance(data, dict) else None
        return list(entry.get("llm") or []) if isinstance(entry, dict) else []

    def delete_llm(self, name: str) -> None:
        self.send(calls.delete_llm(name))

    def tenant_info(self) -> dict:
        """{tenant_id, llm_id, embd_id, rerank_id, asr_id, img2txt_id, ...}; remembers which route answered."""
        routes = [("api", "/api/v1/users/me/models"), ("v1", "/v1/user/tenant_info")]
        if self.tenant_route == "v1":
            routes.reverse()
        last: RagflowError | None = None
        for route, path in routes:
            try:
                data = self.get(path)
            except RagflowError as exc:
                if not is_not_found(exc):
                    raise
                last = exc
                continue
            self.tenant_route = route
            return data or {}
        assert last is not None
        raise last

    def set_tenant_info(self, values: dict) -> None:
        if self.tenant_route is None:
            self.tenant_info()
        self.send(calls.set_tenant_info(values, route=self.tenant_route or "api"))
