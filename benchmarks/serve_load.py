"""Load test of `kvemb serve`: 1, 8 and 32 concurrent clients, each sending one text per request.

The server runs in its own process (`python -m kvemb_rag.cli serve`, the model loaded once); the clients are
threads of this process using the official `openai` client. For each concurrency level: p50 / p99 request
latency and throughput (texts per second), and the throughput as a ratio of offline batched
`KVEmbedder.encode` of the same texts in this process (the engine's own batching, no HTTP). Writes
`benchmarks/serve_load.json` and prints a markdown table.

    python -m benchmarks.serve_load [--model smollm2-135m-instruct] [--requests 96] [--levels 1,8,32]

The default model is the bundled SmolLM2-135M when installed, else the tiny stories260K test model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = REPO.parent / "shared/data/models/stories260K/hf"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _default_model() -> str:
    from kvemb_rag.engine.models import bundled_model_path

    try:
        bundled_model_path("smollm2-135m-instruct")
        return "smollm2-135m-instruct"
    except Exception:
        return str(TINY)


def _start_server(model: str, port: int, env: dict[str, str], extra: list[str]) -> subprocess.Popen[bytes]:
    import httpx

    command = [sys.executable, "-m", "kvemb_rag.cli", "serve", "--model", model, "--port", str(port), *extra]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"kvemb serve exited with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("kvemb serve did not start in 600 s")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)


def _level(client: Any, model: str, texts: list[str], clients: int) -> dict[str, Any]:
    """``len(texts)`` requests of one text, spread over ``clients`` threads; latency and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        mine = texts[k::clients]
        barrier.wait()
        for text in mine:
            t0 = time.perf_counter()
            client.embeddings.create(model=model, input=text)
            with lock:
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(texts),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "texts_per_s": round(len(texts) / wall, 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: smollm2-135m-instruct if installed, else stories260K")
    parser.add_argument("--requests", type=int, default=96, help="requests (one text each) per concurrency level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the baseline and the server (OMP_NUM_THREADS); 1 on a shared machine, where "
        "OpenMP's spinning threads slow a contended multi-threaded run down many times",
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/serve_load.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    import openai
    import torch

    from kvemb_rag import KVEmbedder, default_calibration_texts

    model = args.model or _default_model()
    torch.set_num_threads(args.threads)
    texts = default_calibration_texts()[: args.requests]
    embedder = KVEmbedder(model, show_progress_bar=False)
    embedder.encode_document(texts[:8])  # warm-up
    offline = []
    for _ in range(3):
        t0 = time.perf_counter()
        expected = embedder.encode_document(texts)
        offline.append(time.perf_counter() - t0)
    offline_rate = len(texts) / min(offline)
    tokens = [embedder.count_tokens(t) for t in texts]
    del embedder

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": str(args.threads),
    }
    server = _start_server(model, port, env, ["--max-wait-ms", str(args.max_wait_ms)])
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)
        got = np.array([d.embedding for d in client.embeddings.create(model=model, input=texts[:8]).data])
        max_error = float(np.abs(got - expected[:8]).max())
        _level(client, model, texts[:8], 1)  # warm-up (connections, first batches)
        rows = []
        for clients in (int(c) for c in args.levels.split(",")):
            row = _level(client, model, texts, clients)
            row["ratio_to_offline"] = round(row["texts_per_s"] / offline_rate, 3)
            rows.append(row)
            print(f"clients={clients}: {row}", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)

    result = {
        "model": model,
        "texts": len(texts),
        "tokens_per_text_mean": round(float(np.mean(tokens)), 1),
        "offline_batched_texts_per_s": round(offline_rate, 1),
        "offline_batched_s": [round(t, 3) for t in offline],
        "server_vs_engine_max_abs_error": max_error,
        "max_wait_ms": args.max_wait_ms,
        "torch_threads": args.threads,
        "levels": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "note": "the server, the clients and the offline baseline share the same CPUs",
        },
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"Model: {model}; torch threads {args.threads}; {len(texts)} texts of {result['tokens_per_text_mean']} "
          f"tokens on average (template included); offline batched encode: "
          f"{result['offline_batched_texts_per_s']} texts/s.\n")
    print("| concurrent clients | requests | p50 latency (ms) | p99 latency (ms) | texts/s | vs offline batched |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} | {row['texts_per_s']} | "
              f"{row['ratio_to_offline']:.2f} |")


if __name__ == "__main__":
    main()
