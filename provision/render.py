"""Results -> what a person reads (text) and what a script reads (one JSON document)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from .report import envelope, print_json, seconds, table

Rendered = tuple[str, dict]


def emit(rendered: Rendered, as_json: bool, command: str, exit_code: int) -> None:
    text, data = rendered
    if as_json:
        errors = data.pop("_errors", [])
        print_json(envelope(command, exit_code, data, errors))
    else:
        data.pop("_errors", None)
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()
    sys.exit(exit_code)


def plan_lines(plan) -> list[str]:
    lines = [f"Plan for {plan.name} ({plan.manifest})", f"  server: {plan.server} - {plan.server_reason}"]
    lines += [f"  GPUs: {plan.gpus}"] if plan.gpus else []
    lines += [f"  disk: {plan.disk}"] if plan.disk else []
    for step in plan.steps:
        lines.append(f"  {step.role} {step.uid}: {step.action} - {step.reason}")
        if step.action in ("keep", "terminate"):
            continue
        for c in step.candidates:
            head = f"      {'skip' if c.skip_reason else 'first' if c.first else 'then':<6}{c.label:<11} {c.name} on {c.engine}"
            if c.skip_reason:
                lines.append(f"{head}: {c.skip_reason}")
                continue
            notes = f" [{', '.join(c.notes)}]" if c.notes else ""
            lines.append(f"{head}: weights {c.weights}{notes}")
            lines.append(f"{'':<23}engine {c.engine_check or '-'}; memory {c.memory or '-'}")
    return lines


def plan(result) -> Rendered:
    lines = plan_lines(result) + [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines), {"plan": asdict(result), "_errors": []}


REASON_WIDTH = 100  # the table stays readable; --json and the failure summary carry the whole text


def attempt_rows(record) -> list[list[Any]]:
    rows = []
    for a in record.attempts:
        reason = (a.kind + ": " if a.kind else "") + a.reason.split(" (hint: ")[0]
        if len(reason) > REASON_WIDTH:
            reason = reason[: REASON_WIDTH - 3] + "..."
        rows.append([record.uid, a.candidate, a.name, a.engine, a.outcome, seconds(a.seconds), reason])
    return rows


def up(result) -> Rendered:
    state = result.state
    kept = {s.uid for s in result.plan.steps if s.action == "keep"}
    lines = ["", "Attempts"]
    rows = [row for m in state.models if m.uid not in kept for row in attempt_rows(m)]
    lines.append(table(["uid", "candidate", "model", "engine", "outcome", "time", "reason"], rows) if rows else "  (no launches)")
    lines += [f"  kept running: {m.uid} ({m.candidate}, {m.name} on {m.engine})" for m in state.models if m.uid in kept]
    failed = [m for m in state.models if m.status == "failed"]
    for m in failed:
        lines += ["", f"{m.role} {m.uid} failed: {m.error}"]
    lines += ["", "Verify", _checks_table(result.checks)]
    timing = ", ".join(f"{k} {seconds(v)}" for k, v in result.timings.items())
    lines += ["", f"Timings: {timing}"]
    if result.files:
        lines += ["", "RAGFlow config written: " + ", ".join(result.files.values())]
    if result.paste:
        lines += ["", result.paste]
    if result.ragflow_applied is not None:
        lines += ["", *result.ragflow_applied.lines()]
    if result.ragflow_error is not None:
        lines += ["", f"RAGFlow: error: {result.ragflow_error.render()}"]
    data = {
        "plan": asdict(result.plan),
        "server": asdict(state.server) if state.server else None,
        "models": state.to_json()["models"],  # secret launch options hidden, as in state.json
        "checks": [asdict(c) for c in result.checks],
        "ragflow": result.provider,
        "files": result.files,
        "timings": result.timings,
        "terminated": result.terminated,
        "earlier_server": result.earlier_server,
        "ragflow_apply": result.ragflow_applied.to_json() if result.ragflow_applied is not None else None,
        "_errors": [{"type": "LaunchError", "message": f"{m.uid}: {m.error}"} for m in failed]
        + [_check_error(c) for c in result.checks if not c.ok]
        + ([result.ragflow_error.to_json()] if result.ragflow_error is not None else [])
        + (ragflow_apply_errors(result.ragflow_applied) if result.ragflow_applied is not None else []),
    }
    return "\n".join(lines), data


def _check_error(check) -> dict:
    return {"type": "VerifyError", "message": check.message, "hint": check.hint}


def _checks_table(checks) -> str:
    if not checks:
        return "  (nothing to verify)"
    rows = [[c.role, c.uid, c.status, seconds(c.latency_s), c.detail or ""] for c in checks]
    lines = [table(["role", "uid", "result", "latency", "detail"], rows)]
    for c in checks:
        if not c.ok:
            lines.append(f"  {c.message}" + (f"\n    hint: {c.hint}" if c.hint else ""))
    return "\n".join(lines)


def verify(result) -> Rendered:
    data = {
        "checks": [asdict(c) for c in result.checks],
        "_errors": [_check_error(c) for c in result.checks if not c.ok],
    }
    return _checks_table(result.checks), data


def status(result) -> Rendered:
    state = result.state
    lines = [
        f"Stack {state.name} ({state.manifest})",
        f"Server: {'alive' if result.server_alive else 'DOWN'} - {result.server_detail}",
        f"Base URL: {result.base_url}",
    ]
    if any(p.role != "server" for p in result.processes):  # a cluster: the supervisor and each worker
        lines += ["", table(["process", "address", "pid", "state", "log"],
                            [[p.role, p.address, p.pid or "-", "running" if p.alive else "GONE", p.log or "-"]
                             for p in result.processes])]
    placed = any(m.workers for m in result.models)
    lines += [
        "",
        table(
            ["role", "uid", "recorded", "live", "candidate", "engine"] + (["worker"] if placed else []),
            [[m.role, m.uid, m.recorded, m.live, m.candidate or "-", m.engine or "-"]
             + ([", ".join(m.workers) or "-"] if placed else []) for m in result.models],
        ),
    ]
    rows = [row for m in result.models for row in attempt_rows(m)]
    if rows:
        lines += ["", "Attempts", table(["uid", "candidate", "model", "engine", "outcome", "time", "reason"], rows)]
    lines += [f"  {m.uid}: {m.error}" for m in result.models if m.error]
    data = {
        "name": state.name,
        "manifest": state.manifest,
        "server": {"alive": result.server_alive, "detail": result.server_detail, **(asdict(state.server) if state.server else {})},
        "processes": [asdict(p) for p in result.processes],
        "base_url": result.base_url,
        "models": [asdict(m) for m in result.models],
        "_errors": [],
    }
    return "\n".join(lines), data


def down(result) -> Rendered:
    lines = [f"Terminated: {', '.join(result.terminated) or 'none'}"]
    if result.already_gone:
        lines.append(f"Already gone: {', '.join(result.already_gone)}")
    lines.append(f"Server: {result.server}")
    lines += [f"error: {e}" for e in result.errors]
    data = asdict(result)
    data["_errors"] = [{"type": "XinferenceError", "message": e} for e in result.errors]
    return "\n".join(lines), data


def ragflow_apply_errors(applied) -> list[dict]:
    """RAGFlow's failed checks and the defaults held back, as errors[] entries."""
    errors = [{"type": "RagflowCheck", "message": f"{c.uid}: {c.message}", "hint": c.remedy}
              for c in applied.checks if c.ok is False]
    return errors + [{"type": "RagflowDefault", "message": f"default {d.model_type} held: {d.reason}", "hint": None}
                     for d in applied.defaults if d.action == "held"]


def ragflow_apply(result) -> Rendered:
    applied = result.result
    return "\n".join(applied.lines()), {"ragflow": applied.to_json(), "_errors": ragflow_apply_errors(applied)}


def ragflow_status(result) -> Rendered:
    seen = result.result
    return "\n".join(seen.lines()), {"ragflow": seen.to_json(), "_errors": []}


def ragflow(result) -> Rendered:
    text = result.paste
    if result.files:
        text += "\n\nFiles: " + ", ".join(result.files.values())
    return text, {"ragflow": result.provider, "docker": result.docker, "files": result.files, "_errors": []}


def models(result) -> Rendered:
    head = f"catalog: {result.catalog}"
    if result.detail is not None:
        d = result.detail
        lines = [f"{d['name']} ({d['role']}, {d['model_type']}) - {head}"]
        lines += [f"  {d['description']}"] if d["description"] else []
        lines += [f"  {label}: {value}" for label, value in (
            ("dimensions", d["dimensions"]), ("max tokens", d["max_tokens"]), ("context length", d["context_length"]),
            ("abilities", ", ".join(d["abilities"])), ("languages", ", ".join(d["languages"])),
            ("architectures", ", ".join(d["architectures"]))) if value]
        rows = [[s["format"], s["size_in_billions"] or "-", _list(s["quantizations"], 6),
                 (s["sources"].get("modelscope") or {}).get("model_id", "-"),
                 (s["sources"].get("huggingface") or {}).get("model_id", "-"),
                 s["kv_cache_bytes_per_token"] or "-"] for s in d["specs"]]
        lines += ["", table(["format", "size (B)", "quantizations", "modelscope", "huggingface", "KV bytes/token"], rows)]
        lines += ["", "Manifest entry (under `models:`):", d["manifest_entry"].rstrip("\n")]
        return "\n".join(lines), {"catalog": result.catalog, "model": d, "_errors": []}
    found = result.found
    rows = [[s["name"], s["role"], _list(s["sizes"]), _list(s["formats"]), _list(s["quantizations"]),
             _numbers(s), _list(s["abilities"]), _list(s["modelscope_ids"], 2), _list(s["huggingface_ids"], 2)]
            for s in found]
    lines = [table(["name", "role", "sizes (B)", "formats", "quantizations", "numbers", "abilities",
                    "modelscope", "huggingface"], rows) if rows else "  (no model matches)"]
    what = f"{len(found)} model{'s' * (len(found) != 1)}" + (f" matching {result.query!r}" if result.query else "")
    lines += ["", f"{what}{' as ' + result.role if result.role else ''} - {head}"]
    if len(found) == 1 or not found:
        lines.append("`provision models NAME` shows one in full, with a manifest entry for it"
                     if found else "try a shorter query (`provision models bge`), or none to list them all")
    errors = [] if found or not result.query else [
        {"type": "NotFound", "message": f"no model matches {result.query!r}", "hint": "try a shorter query"}]
    return "\n".join(lines), {"catalog": result.catalog, "query": result.query, "role": result.role,
                              "models": found, "_errors": errors}


def _list(values, limit: int = 4) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit})" if len(values) > limit else "") or "-"


def _numbers(summary: dict) -> str:
    """What RAGFlow is told: an embedding's dimensions and max tokens, a reranker's max tokens, a context."""
    said = [f"{summary['dimensions']} dims"] if summary["dimensions"] else []
    said += [f"{summary['max_tokens']} tokens"] if summary["max_tokens"] else []
    said += [f"ctx {summary['context_length']}"] if summary["context_length"] else []
    return ", ".join(said) or "-"


def init(result) -> Rendered:
    data = {"gpu": result.gpu, "choices": result.choices, "written": result.written, "manifest": result.text,
            "_errors": []}
    if result.written is None:
        return result.text, data  # the manifest itself, for `provision init > stack.yml`
    lines = [f"Wrote {result.written} for {result.gpu}:"] + [f"  {c}" for c in result.choices]
    lines += ["", f"Next: provision validate {result.written} && provision plan {result.written}"]
    return "\n".join(lines), data


DOCTOR_LABELS = {"blocker": "BLOCKER", "warning": "warning", "ok": "ok"}


def doctor_lines(result) -> list[str]:
    """Blockers first, then warnings, then what is fine; each with its why and fix."""
    blockers, warnings = len(result.blockers), len(result.warnings)
    lines = [f"provision doctor: {blockers} blocker{'s' if blockers != 1 else ''}, {warnings} "
             f"warning{'s' if warnings != 1 else ''} (manifest: {result.manifest or '-'}, state: {result.state_dir})"]
    for severity in DOCTOR_LABELS:
        for finding in (f for f in result.findings if f.severity == severity):
            lines.append(f"  [{DOCTOR_LABELS[severity]}] {finding.check}: {finding.what}")
            lines += [f"      why: {finding.why}"] if finding.why else []
            lines += [f"      fix: {finding.fix}"] if finding.fix else []
    lines.append("Fix the blockers above before `provision up`." if blockers
                 else "Nothing here blocks `provision up`.")
    return lines


def doctor_json(result) -> dict:
    return {"manifest": result.manifest, "state_dir": result.state_dir, "blockers": len(result.blockers),
            "warnings": len(result.warnings), "findings": [f.to_json() for f in result.findings]}


def doctor(result) -> Rendered:
    data = doctor_json(result)
    data["_errors"] = [{"type": "Blocker", "message": f"{f.check}: {f.what}", "hint": f.fix or None}
                       for f in result.blockers]
    return "\n".join(doctor_lines(result)), data


def bench(result) -> Rendered:
    data = result.to_json()
    data["_errors"] = [{"type": "BenchError", "message": f"{e.name}: {e.error}", "hint": None}
                       for e in result.report.endpoints if e.error]
    data["_errors"] += [{"type": "BenchError", "message": f"{e.name} at concurrency {lv.concurrency}: {lv.errors} of "
                         f"{lv.requests} requests failed ({'; '.join(lv.error_samples)})", "hint": None}
                        for e in result.report.endpoints for lv in e.levels if lv.errors]
    if result.comparison is not None:
        data["_errors"] += [{"type": "Regression", "message": c.line(), "hint": None} for c in result.comparison.slower]
    return "\n".join(result.text_lines()), data


def bench_level(name: str, stats) -> str:
    """One progress line after each level of `provision bench` (stderr)."""
    p99 = f"p99 {stats.latency.p99 * 1000:.0f} ms" if stats.latency else "no answer"
    errors = f", {stats.errors} errors" if stats.errors else ""
    requests = f"{stats.requests} request{'s' * (stats.requests != 1)}"
    return f"bench {name} at concurrency {stats.concurrency}: {requests}, {stats.rps:.2f}/s, {p99}{errors}"


def _service_data(result) -> dict:
    data = {"unit": result.unit, "path": str(result.path), "action": result.action, "commands": result.commands,
            "ran": result.ran, "outputs": result.outputs, "notes": result.notes, "text": result.text}
    data["_errors"] = [{"type": "SystemctlFailed", "message": n, "hint": None} for n in result.notes
                       if n.startswith("`systemctl")] if result.exit_code else []
    return data


def _service_commands(result) -> list[str]:
    if result.ran:
        return [f"ran: {c}" + (f"\n  {o}" if o else "") for c, o in zip(result.commands, result.outputs)]
    return [f"run: {c}" for c in result.commands]


def service_install(result) -> Rendered:
    if result.action == "printed":  # the unit alone on stdout: `--print > provision-STACK.service`
        return result.text, _service_data(result)
    head = {"written": f"Wrote {result.path}", "unchanged": f"{result.path} is already this unit: unchanged"}
    lines = [f"{head[result.action]} ({result.unit})"] + _service_commands(result) + [f"note: {n}" for n in result.notes]
    return "\n".join(lines), _service_data(result)


def service_uninstall(result) -> Rendered:
    if result.action == "not installed":
        lines = [f"{result.unit} is not installed (no {result.path}): nothing to do"]
    else:
        lines = [f"Removed {result.path} ({result.unit})"] + _service_commands(result)
    return "\n".join(lines + [f"note: {n}" for n in result.notes]), _service_data(result)
