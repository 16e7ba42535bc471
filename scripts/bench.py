"""Benchmarks of `provision` against doing the same by hand, measured in one run on the same models.

    .venv/bin/python scripts/bench.py [--rate-mib 10] [--scale-mib 240] [--runs 15]

P1  `provision up` time-to-ready  vs  the runbook done by hand in order (download every model, start the
    server, launch one model after another, then check), the mirror throttled to --rate-mib MiB/s and
    the model folders padded to the relative sizes of the real models (bge-m3 2.2 GB, bge-reranker-v2-m3
    2.2 GB, Qwen3-4B 8 GB), scaled so the biggest is --scale-mib MiB.        target <= 0.75
    The mirror throttles each connection, as public hubs do. With the defaults, downloading by hand
    takes about 1.5x the server's start-up here; for the real models (12.4 GB at a typical 30-50 MB/s)
    it is 5-10x, so the defaults understate what overlapping the downloads with the start-up saves.
P2  a no-op `up` (nothing changed)  vs  the fresh `up` of P1.                  target <= 0.05
P3  `provision --help` start-up  vs  `python -c "import click"`, medians in a clean venv
    (scripts/bench_startup.py).                                                 target <= 1.3
P4  downloading through provision  vs  raw `snapshot_download` on the same repos (no throttle).
                                                                               target <= 1.05
P5  `up` after `down` with the weights present (what a reboot or `watch` does)  vs  the runbook's server start
    and launches done by hand (one after another, weights present, the same home), in turns, medians of
    --p5-runs each; where the time goes: server, each launch, verify, the rest.  target <= 1.05
P6  `watch` repair time: a model's process SIGKILLed -> that model answering again, against one plain
    launch of the same model on the same server. The server may recreate a dead model once
    (XINFERENCE_MODEL_ACTOR_AUTO_RECOVER_LIMIT=1): the first kill is recreated by Xinference while watch
    waits (P6a), the second is relaunched by watch's `up` (P6b). --watch-interval S (default 5).
                                                                               target <= 1.3
P7  `provision status` and `provision verify` of the running 3-model stack, medians  vs  one raw request per
    model (the same three calls verify makes), from a fresh Python process and from a warm one.

Real parts only: the real xinference-local (CPU), the real modelscope client, `provision mirror`
on loopback. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_startup import startup  # noqa: E402
from e2e_support import cli_env  # noqa: E402  (tests/ is put on the path just above)
from support import free_port  # noqa: E402

from provision.verify import CHAT_MAX_TOKENS, CHAT_PROBE, EMBED_INPUTS, RERANK_DOCUMENTS, RERANK_QUERY  # noqa: E402

# Relative sizes of the real models the runbook serves (GB): embedding, rerank, chat.
REAL_SIZES = {"tiny/minilm-embed": 2.2, "tiny/rerank-bert": 2.2, "tiny/qwen2-chat": 8.0}
ROLE_OF = {"tiny/minilm-embed": "embedding", "tiny/rerank-bert": "rerank", "tiny/qwen2-chat": "chat"}
LAUNCH = {
    "embedding": {"model_uid": "b-embed", "model_name": "bge-small-en-v1.5", "model_type": "embedding",
                  "model_engine": "sentence_transformers"},
    "rerank": {"model_uid": "b-rerank", "model_name": "bge-reranker-base", "model_type": "rerank",
               "model_engine": "sentence_transformers"},
    "chat": {"model_uid": "b-chat", "model_name": "qwen2.5-instruct", "model_type": "LLM",
             "model_engine": "transformers", "model_format": "pytorch", "model_size_in_billions": "0_5",
             "quantization": "none"},
}
MANIFEST = """\
version: 1
name: bench
server: {{host: 127.0.0.1, port: {port}, home: {home}, auth: false,  # as the runbook: auth off
          env: {{XINFERENCE_MODEL_ACTOR_AUTO_RECOVER_LIMIT: "1"}}}}  # P6: one recreation by Xinference, then watch
download: {{hub: modelscope, endpoint: "{mirror}", models_dir: {models}}}
models:
  - {{role: embedding, uid: b-embed, name: bge-small-en-v1.5, source: tiny/minilm-embed, engine: sentence_transformers}}
  - {{role: rerank, uid: b-rerank, name: bge-reranker-base, source: tiny/rerank-bert, engine: sentence_transformers}}
  - {{role: chat, uid: b-chat, name: qwen2.5-instruct, source: tiny/qwen2-chat, engine: transformers,
      size_in_billions: 0.5, format: pytorch, quantization: none}}
"""


def padded_mirror(root: Path, scale_mib: int) -> Path:
    """Tiny models, each padded with one extra file so the folders have the real models' relative sizes."""
    from tiny_models import build_all

    built = build_all(REPO / ".test-cache" / "mirror")
    biggest = max(REAL_SIZES.values())
    for model_id, folder in built.items():
        if model_id not in REAL_SIZES:  # the catalog-named copy of the embedding model: not served here
            continue
        target = root / model_id
        shutil.copytree(folder, target)
        have = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        want = int(REAL_SIZES[model_id] / biggest * scale_mib * 2**20)
        if want > have:
            with open(target / "padding.safetensors", "wb") as handle:
                handle.write(os.urandom(1 << 20) * ((want - have) >> 20))
    return root


def provision(args: list[str], env: dict, state: Path, output: list | None = None) -> float:
    """Seconds `provision ARGS` took; its stdout is appended to `output` when given."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "provision", "--state-dir", str(state), *args],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"provision {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if output is not None:
        output.append(proc.stdout)
    return seconds


def raw_download(mirror_url: str, models_dir: Path, env: dict) -> float:
    code = (
        "import sys, time\nfrom modelscope import snapshot_download\n"
        "for repo in sys.argv[3:]:\n"
        "    snapshot_download(repo, local_dir=f'{sys.argv[2]}/{repo}', endpoint=sys.argv[1])\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, mirror_url, str(models_dir), *REAL_SIZES], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def runbook_by_hand(mirror_url: str, work: Path, env: dict, download: bool = True) -> dict[str, float]:
    """The runbook in order: download all (unless the weights are there), start the server, launch one after
    another, then check. The seconds of each phase, and `total`."""
    import requests

    phases: dict[str, float] = {}
    started = time.perf_counter()
    models = work / "hand-models"
    if download:
        phases["download"] = raw_download(mirror_url, models, env)
    port = free_port()
    server_env = {**env, "XINFERENCE_HOME": str(work / "hand-home"), "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
                  "XINFERENCE_AUTH_ADVANCED": "0", "XINFERENCE_MODEL_SRC": "modelscope"}
    exe = Path(sys.executable).with_name("xinference-local")
    log = open(work / "hand-server.log", "wb")
    began = time.perf_counter()
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(f"{base}/v1/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"xinference-local died; see {work / 'hand-server.log'}")
            time.sleep(1)
        phases["server"] = time.perf_counter() - began
        for model_id, role in ROLE_OF.items():
            began = time.perf_counter()
            body = {**LAUNCH[role], "model_path": str(models / model_id), "n_gpu": None}
            response = requests.post(f"{base}/v1/models", json=body, timeout=600)
            response.raise_for_status()
            phases[f"launch {role}"] = time.perf_counter() - began
        began = time.perf_counter()
        raw_requests(base)
        phases["checks"] = time.perf_counter() - began
        phases["total"] = time.perf_counter() - started
        return phases
    finally:
        stop_by_hand(proc)
        log.close()


def stop_by_hand(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what it left in its group (it is ours: we made the group)


# The three calls `verify` makes, one per model, as a person would make them by hand (`base` is given).
RAW_REQUESTS = f"""
import requests
requests.post(base + "/v1/embeddings", json={{"model": "b-embed", "input": {EMBED_INPUTS!r}}}, timeout=60).raise_for_status()
requests.post(base + "/v1/rerank", json={{"model": "b-rerank", "query": {RERANK_QUERY!r}, "documents": {RERANK_DOCUMENTS!r},
              "return_documents": "true", "return_len": "true"}}, timeout=60).raise_for_status()
requests.post(base + "/v1/chat/completions", timeout=120, json={{"model": "b-chat", "max_tokens": {CHAT_MAX_TOKENS},
              "messages": [{{"role": "user", "content": {CHAT_PROBE!r}}}]}}).raise_for_status()
"""


def raw_requests(base: str) -> None:
    exec(RAW_REQUESTS, {"base": base})


# -- P5, P6, P7 -------------------------------------------------------------------------------------


def up_after_down(manifest: Path, env: dict, state: Path) -> dict:
    """P5's `up` (the stack was just brought down; the weights are on disk): wall time and where it went."""
    out: list[str] = []
    wall = provision(["up", str(manifest), "--json"], env, state, out)
    doc = json.loads(out[0])
    launches = {}
    for model in doc["models"]:
        won = next((a for a in model["attempts"] if a["outcome"] == "ready"), None)
        launches[model["uid"]] = won["seconds"] if won else None
    timings = doc["timings"]
    inside = timings.get("serve", 0) + timings.get("launch", 0) + timings.get("verify", 0)
    return {"wall_s": wall, "timings": timings, "launch_s": launches,
            "rest_s": wall - inside}  # CLI start-up, catalog, observe, plan, RAGFlow config, state writes


def status_and_verify(base: str, env: dict, state: Path, runs: int) -> dict:
    statuses = [provision(["status"], env, state) for _ in range(runs)]
    verifies = [provision(["verify"], env, state) for _ in range(runs)]
    fresh, warm = [], []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; base = sys.argv[1]\n" + RAW_REQUESTS, base], env=env,
                       check=True, capture_output=True)
        fresh.append(time.perf_counter() - began)
        began = time.perf_counter()
        raw_requests(base)
        warm.append(time.perf_counter() - began)
    status, verify, raw, raw_warm = (statistics.median(x) for x in (statuses, verifies, fresh, warm))
    return {"status_s": status, "verify_s": verify, "raw_requests_process_s": raw, "raw_requests_in_process_s": raw_warm,
            "status_ratio": status / raw, "verify_ratio": verify / raw, "runs": runs}


def model_process(state: Path, uid: str) -> int:
    import psutil

    pgid = json.loads((state / "state.json").read_text())["server"]["pgid"]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and any(f"Model: {uid}" in part for part in proc.info["cmdline"] or []):
                return proc.pid
    raise SystemExit(f"no model process of {uid} in the server's group")


def answering(base: str, uid: str = "b-embed") -> bool:
    import requests

    try:
        return requests.post(f"{base}/v1/embeddings", json={"model": uid, "input": ["a", "b"]}, timeout=30).status_code == 200
    except requests.RequestException:
        return False


def until_answering(base: str, since: float, limit: float = 600) -> float:
    while not answering(base):
        if time.perf_counter() - since > limit:
            raise SystemExit(f"b-embed did not answer again within {limit:.0f} s")
        time.sleep(0.2)
    return time.perf_counter() - since


def plain_launch(base: str, state: Path) -> float:
    """One launch of b-embed's own payload under another uid, as a person would POST it; until it answers."""
    import requests

    record = next(m for m in json.loads((state / "state.json").read_text())["models"] if m["uid"] == "b-embed")
    body = {**record["payload"], "model_uid": "b-embed-plain"}
    began = time.perf_counter()
    requests.post(f"{base}/v1/models", json=body, timeout=600).raise_for_status()
    while not answering(base, "b-embed-plain"):
        time.sleep(0.2)
    took = time.perf_counter() - began
    requests.delete(f"{base}/v1/models/b-embed-plain", timeout=120).raise_for_status()
    return took


def watch_repairs(manifest: Path, base: str, env: dict, state: Path, work: Path, interval: float) -> dict:
    """P6: `provision watch` on the stack; b-embed's process SIGKILLed twice, each time until it answers again."""
    plain = plain_launch(base, state)
    events = work / "watch.jsonl"
    with open(work / "watch.log", "w") as out:
        watcher = subprocess.Popen([sys.executable, "-m", "provision", "--state-dir", str(state), "watch", str(manifest),
                                    "--interval", str(interval), "--json-log", str(events)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def logged(event: str, subject: str, after: int = 0, limit: float = 600) -> dict:
            deadline = time.perf_counter() + limit
            while time.perf_counter() < deadline:
                if watcher.poll() is not None:
                    raise SystemExit(f"watch exited ({watcher.returncode}); see {work / 'watch.log'}")
                lines = events.read_text().splitlines() if events.exists() else []
                for line in lines[after:]:
                    e = json.loads(line)
                    if e["event"] == event and subject in e["subject"]:
                        return e
                time.sleep(0.2)
            raise SystemExit(f"watch did not log {event} {subject} within {limit:.0f} s; see {work / 'watch.log'}")

        def count() -> int:
            return len(events.read_text().splitlines()) if events.exists() else 0

        logged("ok", "")
        result = {"plain_launch_s": plain, "interval_s": interval}
        for name, wanted in (("P6a", "recovered"), ("P6b", "repaired")):
            before = count()
            os.kill(model_process(state, "b-embed"), signal.SIGKILL)
            killed_at, killed_wall = time.perf_counter(), time.time()
            back = until_answering(base, killed_at)
            drift = logged("drift", "b-embed", before)
            done = logged(wanted, "b-embed", before)
            detected = datetime.fromisoformat(drift["ts"]).timestamp() - killed_wall
            result[name] = {"back_s": back, "detected_s": detected, "watch_says": f"{done['event']}: {done['detail']}",
                            "ratio": back / plain}
        return result
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            result_code = watcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()
            result_code = watcher.wait()
        if result_code != 0:
            print(f"watch exited with {result_code} on SIGTERM; see {work / 'watch.log'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mib", type=float, default=10.0, help="per-connection mirror throttle for P1, MiB/s")
    parser.add_argument("--scale-mib", type=int, default=240, help="padded size of the biggest model, MiB")
    parser.add_argument("--runs", type=int, default=15, help="runs per median for P3")
    parser.add_argument("--p5-runs", type=int, default=3, help="runs of each side per median for P5")
    parser.add_argument("--p7-runs", type=int, default=7, help="runs per median for P7")
    parser.add_argument("--watch-interval", type=float, default=5.0, help="`provision watch --interval` for P6, s")
    args = parser.parse_args()

    from provision.mirror import MirrorServer

    work = Path(tempfile.mkdtemp(prefix="provision-bench-"))
    env = cli_env(work)
    results: dict[str, dict] = {}
    try:
        root = padded_mirror(work / "mirror", args.scale_mib)
        sizes = {m: sum(f.stat().st_size for f in (root / m).rglob("*") if f.is_file()) for m in REAL_SIZES}
        print("models:", ", ".join(f"{m} {s / 2**20:.0f} MiB" for m, s in sizes.items()), flush=True)

        with MirrorServer(root, rate_limit_bytes_per_s=int(args.rate_mib * 2**20)) as mirror:
            mirror.warm()
            port = free_port()
            manifest = work / "bench.yml"
            manifest.write_text(MANIFEST.format(port=port, home=work / "home", mirror=mirror.url, models=work / "models"))
            state = work / "state"
            base = f"http://127.0.0.1:{port}"
            down = [sys.executable, "-m", "provision", "--state-dir", str(state), "down"]
            ups, hands = [], []  # P5: provision and the runbook by hand, one after the other, --p5-runs times each
            try:
                fresh = provision(["up", str(manifest)], env, state)
                noop = provision(["up", str(manifest)], env, state)
                provision(["down"], env, state)
                hand = runbook_by_hand(mirror.url, work, env)  # P1's counterpart; fetches the hand-run's weights
                for run in range(args.p5_runs):
                    ups.append(up_after_down(manifest, env, state))
                    print(f"P5 up after down: {ups[-1]['wall_s']:.1f} s", flush=True)
                    if run == 0:  # the running stack serves P7 and P6 first
                        p7 = status_and_verify(base, env, state, args.p7_runs)
                        print(f"P7 status {p7['status_s']:.2f} s, verify {p7['verify_s']:.2f} s", flush=True)
                        p6 = watch_repairs(manifest, base, env, state, work, args.watch_interval)
                    subprocess.run(down, env=env, capture_output=True)
                    hands.append(runbook_by_hand(mirror.url, work, env, download=False))  # weights present, same home
                    print(f"P5 by hand: {hands[-1]['total']:.1f} s", flush=True)
            finally:
                subprocess.run(down, env=env, capture_output=True)
        by_hand = hand["total"]
        results["P1"] = {"provision_up_s": fresh, "runbook_by_hand_s": by_hand, "ratio": fresh / by_hand, "target": 0.75}
        results["P2"] = {"noop_up_s": noop, "fresh_up_s": fresh, "ratio": noop / fresh, "target": 0.05}
        for h in hands:
            h["server_and_launches"] = h["server"] + sum(v for k, v in h.items() if k.startswith("launch "))
        p5 = sorted(ups, key=lambda u: u["wall_s"])[len(ups) // 2]  # the median run, shown in full
        hand_again = sorted(hands, key=lambda h: h["server_and_launches"])[len(hands) // 2]
        hand_start = hand_again["server_and_launches"]
        results["P5"] = {"provision_up_after_down_s": p5["wall_s"], "by_hand_server_and_launches_s": hand_start,
                         "ratio": p5["wall_s"] / hand_start, "target": 1.05, "runs": len(ups),
                         "provision_runs_s": [round(u["wall_s"], 1) for u in ups],
                         "by_hand_runs_s": [round(h["server_and_launches"], 1) for h in hands],
                         "provision": p5, "by_hand": hand_again}
        results["P6"] = {**p6, "ratio": p6["P6b"]["ratio"], "target": 1.3}
        results["P7"] = {**p7, "ratio": p7["verify_ratio"], "target": None}

        with MirrorServer(root) as mirror:
            mirror.warm()
            code = (
                "import sys\nfrom provision import download\nfrom provision.manifest import load\n"
                "m = load(sys.argv[1])\n"
                "download.download_all([m.candidates(i)[0] for i in range(len(m.models))], m.download)\n"
            )
            raws, ours = [], []
            for run in range(3):  # alternate, into fresh folders each time; medians
                raws.append(raw_download(mirror.url, work / f"raw-models-{run}", env))
                manifest = work / f"p4-{run}.yml"
                manifest.write_text(MANIFEST.format(port=free_port(), home=work / "home", mirror=mirror.url,
                                                    models=work / f"p4-models-{run}"))
                began = time.perf_counter()
                subprocess.run([sys.executable, "-c", code, str(manifest)], env=env, check=True, capture_output=True)
                ours.append(time.perf_counter() - began)
            raw, ours = statistics.median(raws), statistics.median(ours)
        results["P4"] = {"provision_download_s": ours, "raw_snapshot_download_s": raw, "ratio": ours / raw, "target": 1.05}

        results["P3"] = startup(args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(results, indent=2))
    for name in ("P1", "P2", "P3", "P4", "P5", "P6"):
        r = results[name]
        verdict = "ok" if r["ratio"] <= r["target"] else "MISSED"
        print(f"{name}: ratio {r['ratio']:.3f} (target <= {r['target']}) {verdict}")
    p5, p6, p7 = results["P5"], results["P6"], results["P7"]
    t, hand = p5["provision"]["timings"], p5["by_hand"]
    print(f"P5 medians of {p5['runs']}: provision {p5['provision_runs_s']} s, by hand {p5['by_hand_runs_s']} s")
    print(f"P5 where the time goes (median runs): provision {p5['provision_up_after_down_s']:.1f} s = server {t.get('serve', 0):.1f} + "
          f"launches {t.get('launch', 0):.1f} (" + ", ".join(f"{u} {s:.1f}" for u, s in p5["provision"]["launch_s"].items()
                                                        if s is not None) +
          f"; 2 at a time) + verify {t.get('verify', 0):.1f} + the rest {p5['provision']['rest_s']:.1f}; by hand "
          f"{p5['by_hand_server_and_launches_s']:.1f} s = server {hand['server']:.1f} + launches "
          + " + ".join(f"{hand[k]:.1f}" for k in hand if k.startswith("launch ")) + f" (then checks {hand['checks']:.1f})")
    for name in ("P6a", "P6b"):
        r = p6[name]
        print(f"{name}: killed -> answering {r['back_s']:.1f} s vs a plain launch {p6['plain_launch_s']:.1f} s = "
              f"{r['ratio']:.2f} (watch saw it after {r['detected_s']:.1f} s, --interval {p6['interval_s']:g}; "
              f"{r['watch_says']})")
    print(f"P7: status {p7['status_s']:.2f} s, verify {p7['verify_s']:.2f} s (medians of {p7['runs']}) vs one raw request "
          f"per model {p7['raw_requests_process_s']:.2f} s from a fresh python ({p7['raw_requests_in_process_s']:.3f} s "
          f"warm): status x{p7['status_ratio']:.2f}, verify x{p7['verify_ratio']:.2f}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
