"""What `ragflow apply` and `ragflow status` report: dataclasses that render to JSON (to_json) and to text
lines (lines). No secret is ever in them: calls are shown with their keys hidden."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

VERIFIED = "success"


@dataclass
class Step:
    """One change to RAGFlow's configuration: made, or (dry run) to be made."""

    action: str  # create | update | delete | activate | set
    target: str  # "provider Xinference", "instance local", "default embedding", "model x"
    reason: str
    done: bool = False

    def line(self) -> str:
        state = "" if self.done else " (would)"
        return f"{self.action}{state} {self.target}: {self.reason}"


@dataclass
class ModelCheck:
    """RAGFlow's own verdict on one model (its check, run for this model alone)."""

    uid: str
    model_type: str
    ok: bool | None  # None: not checked (dry run)
    message: str = ""  # RAGFlow's message when it failed
    remedy: str | None = None
    stored: str | None = None  # the verify state RAGFlow keeps for the model now

    def lines(self) -> list[str]:
        mark = {True: "ok  ", False: "FAIL", None: "-   "}[self.ok]
        out = [f"  {mark} {self.model_type:<9} {self.uid}" + (f": {_one_line(self.message)}" if self.message else "")]
        if self.remedy:
            out.append(f"       fix: {self.remedy}")
        return out


@dataclass
class DefaultState:
    """The tenant's default model of one type: what we want, what RAGFlow had, what we did."""

    model_type: str
    wanted: str | None  # model reference (uid@instance@Xinference, uid@Xinference up to v0.25)
    current: str | None
    action: str  # unchanged | set | held | skipped
    reason: str = ""

    def line(self) -> str:
        text = f"  {self.model_type:<9} {self.wanted or '-'}: {self.action}"
        if self.action in ("set", "held") and self.current and self.current != self.wanted:
            text += f" (was {self.current})"
        return text + (f"; {self.reason}" if self.reason else "")


@dataclass
class DatasetUse:
    """A dataset with chunks made by another embedding model than the stack's."""

    id: str
    name: str
    chunk_count: int
    embedding_model: str
    dimensions: int | None = None  # of the vectors it stores, where known
    check_code: int | None = None  # RAGFlow's embedding check of the stack's model (0 ok, 10 unlike, 102 failed)
    check_message: str = ""
    avg_cos_sim: float | None = None

    def lines(self, wanted_dimensions: int | None) -> list[str]:
        dims = f"{_dim(self.dimensions)} -> {_dim(wanted_dimensions)} dimensions"
        out = [f"    {self.name} ({self.id}): {self.chunk_count} chunks by {self.embedding_model}, {dims}"]
        if self.check_code is not None:
            verdict = "compatible" if self.check_code == 0 else "NOT compatible"
            sim = f", average similarity {self.avg_cos_sim:.3f}" if self.avg_cos_sim is not None else ""
            out.append(f"      RAGFlow's embedding check: {verdict}{sim}"
                       + (f": {_one_line(self.check_message)}" if self.check_message and self.check_code else ""))
        return out


@dataclass
class EmbeddingGuard:
    current: str | None
    wanted: str
    wanted_dimensions: int | None
    datasets: list[DatasetUse] = field(default_factory=list)
    switched: bool = False
    held: bool = False

    def lines(self) -> list[str]:
        if not self.datasets:
            return []
        out = [f"embedding guard: {len(self.datasets)} dataset(s) with chunks use another embedding model than "
               f"{self.wanted}:"]
        for use in self.datasets:
            out.extend(use.lines(self.wanted_dimensions))
        if self.held:
            out.append("  the default embedding model was NOT switched (switch it anyway with the switch option; "
                       "the datasets keep their own model either way)")
        elif self.switched:
            out.append("  the default embedding model was switched; existing datasets keep their own model until "
                       "they are re-parsed")
        return out


@dataclass
class ApplyResult:
    url: str
    version: str
    generation: str
    instance: str
    base_url: str
    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)  # every call that writes or verifies, keys hidden
    checks: list[ModelCheck] = field(default_factory=list)
    defaults: list[DefaultState] = field(default_factory=list)
    embedding: EmbeddingGuard | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def ok(self) -> bool:
        """Every model passed RAGFlow's check and no default was held back."""
        return all(c.ok is not False for c in self.checks) and not any(d.action == "held" for d in self.defaults)

    def to_json(self) -> dict:
        return {**asdict(self), "changed": self.changed, "ok": self.ok}

    def lines(self) -> list[str]:
        head = "dry run: nothing was changed" if self.dry_run else ""
        out = [f"RAGFlow {self.version} at {self.url} ({_generation(self.generation)}); "
               f"instance {self.instance!r}, Base URL {self.base_url}"]
        if head:
            out.append(head)
        if self.steps:
            out.append("changes:" if not self.dry_run else "would change:")
            out.extend(f"  {s.line()}" for s in self.steps)
        else:
            out.append("no change: RAGFlow already has this stack")
        if self.checks:
            out.append("RAGFlow's check of each model:")
            for check in self.checks:
                out.extend(check.lines())
        if self.defaults:
            out.append("defaults:")
            out.extend(d.line() for d in self.defaults)
        if self.embedding is not None:
            out.extend(self.embedding.lines())
        if self.dry_run and self.calls:
            out.append("calls it would make:")
            out.extend(f"  {_call_line(c)}" for c in self.calls)
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


@dataclass
class ModelStatus:
    uid: str
    model_type: str
    max_tokens: int
    registered: bool
    stored_type: list[str] | None = None
    stored_max_tokens: int | None = None
    verify: str | None = None  # success | fail | unknown (RAGFlow's last check), None when not stored
    status: str | None = None  # active | inactive

    def line(self) -> str:
        if not self.registered:
            return f"  {self.model_type:<9} {self.uid}: NOT in RAGFlow"
        verify = self.verify or "unknown"
        state = "" if self.status in (None, "active", "1") else f", {self.status}"
        return f"  {self.model_type:<9} {self.uid}: max tokens {self.stored_max_tokens}, checked: {verify}{state}"


@dataclass
class StatusResult:
    url: str
    version: str
    generation: str
    instance: str
    base_url: str  # what RAGFlow should have
    instance_found: bool
    instance_base_url: str | None = None  # what it has
    key_matches: bool | None = None  # None: RAGFlow does not show the key (<= v0.25)
    models: list[ModelStatus] = field(default_factory=list)
    extra_models: list[str] = field(default_factory=list)
    defaults: list[DefaultState] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not self.differences

    def to_json(self) -> dict:
        return {**asdict(self), "in_sync": self.in_sync}

    def lines(self) -> list[str]:
        out = [f"RAGFlow {self.version} at {self.url} ({_generation(self.generation)})"]
        if self.generation == "providers":
            if self.instance_found:
                key = {True: "the stack's key", False: "ANOTHER key", None: "key not shown"}[self.key_matches]
                out.append(f"instance {self.instance!r}: Base URL {self.instance_base_url or '(none)'}, {key}")
            else:
                out.append(f"instance {self.instance!r}: NOT in RAGFlow")
        out.append("models:")
        out.extend(m.line() for m in self.models)
        out.extend(f"  {name}: in RAGFlow, not in the stack" for name in self.extra_models)
        if self.defaults:
            out.append("defaults:")
            out.extend(f"  {d.model_type:<9} {d.current or '-'}" + ("" if d.action == "unchanged" else
                                                                    f" (expected {d.wanted})") for d in self.defaults)
        if self.differences:
            out.append("differences (apply fixes them):")
            out.extend(f"  {d}" for d in self.differences)
        else:
            out.append("in sync: RAGFlow has this stack as the manifest says")
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def _generation(name: str) -> str:
    return "providers API" if name == "providers" else "llm_app API, RAGFlow <= 0.25"


def _dim(value: int | None) -> str:
    return str(value) if value else "?"


def _one_line(text: str) -> str:
    return " | ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _call_line(call: dict) -> str:
    import json

    text = f"{call['method']} {call['path']}"
    if call.get("params"):
        text += "?" + "&".join(f"{k}={v}" for k, v in call["params"].items())
    if call.get("body") is not None:
        text += " " + json.dumps(call["body"])
    return text
