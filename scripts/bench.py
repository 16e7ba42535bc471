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

Real parts only: the real xinference-local (CPU), the real modelscope client, `provision mirror`
on loopback. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_startup import startup  # noqa: E402
from e2e_support import cli_env  # noqa: E402  (tests/ is put on the path just above)
from support import free_port  # noqa: E402

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
server: {{host: 127.0.0.1, port: {port}, home: {home}, auth: false}}  # as the runbook: auth off
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
        target = root / model_id
        shutil.copytree(folder, target)
        have = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        want = int(REAL_SIZES[model_id] / biggest * scale_mib * 2**20)
        if want > have:
            with open(target / "padding.safetensors", "wb") as handle:
                handle.write(os.urandom(1 << 20) * ((want - have) >> 20))
    return root


def provision(args: list[str], env: dict, state: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "provision", "--state-dir", str(state), *args],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"provision {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
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


def runbook_by_hand(mirror_url: str, work: Path, env: dict) -> float:
    """The runbook in order: download all, start the server, launch one after another, check."""
    import requests

    started = time.perf_counter()
    models = work / "hand-models"
    raw_download(mirror_url, models, env)
    port = free_port()
    server_env = {**env, "XINFERENCE_HOME": str(work / "hand-home"), "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
                  "XINFERENCE_AUTH_ADVANCED": "0", "XINFERENCE_MODEL_SRC": "modelscope"}
    exe = Path(sys.executable).with_name("xinference-local")
    log = open(work / "hand-server.log", "wb")
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
        for model_id, role in ROLE_OF.items():
            body = {**LAUNCH[role], "model_path": str(models / model_id), "n_gpu": None}
            response = requests.post(f"{base}/v1/models", json=body, timeout=600)
            response.raise_for_status()
        requests.post(f"{base}/v1/embeddings", json={"model": "b-embed", "input": ["a", "b"]}, timeout=60).raise_for_status()
        requests.post(f"{base}/v1/rerank", json={"model": "b-rerank", "query": "q", "documents": ["a", "b"]},
                      timeout=60).raise_for_status()
        requests.post(f"{base}/v1/chat/completions", timeout=120, json={
            "model": "b-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).raise_for_status()
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mib", type=float, default=10.0, help="per-connection mirror throttle for P1, MiB/s")
    parser.add_argument("--scale-mib", type=int, default=240, help="padded size of the biggest model, MiB")
    parser.add_argument("--runs", type=int, default=15, help="runs per median for P3")
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
            try:
                fresh = provision(["up", str(manifest)], env, state)
                noop = provision(["up", str(manifest)], env, state)
            finally:
                subprocess.run([sys.executable, "-m", "provision", "--state-dir", str(state), "down"], env=env,
                               capture_output=True)
            by_hand = runbook_by_hand(mirror.url, work, env)
        results["P1"] = {"provision_up_s": fresh, "runbook_by_hand_s": by_hand, "ratio": fresh / by_hand, "target": 0.75}
        results["P2"] = {"noop_up_s": noop, "fresh_up_s": fresh, "ratio": noop / fresh, "target": 0.05}

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
    for name in ("P1", "P2", "P3", "P4"):
        r = results[name]
        verdict = "ok" if r["ratio"] <= r["target"] else "MISSED"
        print(f"{name}: ratio {r['ratio']:.3f} (target <= {r['target']}) {verdict}")


if __name__ == "__main__":
    main()
