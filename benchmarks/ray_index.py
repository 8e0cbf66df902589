"""Overhead of `kvemb index --ray 2` against single-process indexing, on this machine.

Starts a real Chroma server (`chroma run`), then indexes the same folder twice into two collections with the
CLI, each in a fresh process: `kvemb index DIR --url URL` and `kvemb index DIR --url URL --ray 2` (which
starts a local Ray cluster and two embedding actors). Records the wall time of each process, the indexing
time the command reports, and whether the two collections hold identical records (ids, documents, metadata,
embeddings within 1e-5). Writes `benchmarks/ray_index.json`.

    python -m benchmarks.ray_index [--folder docs] [--model smollm2-135m-instruct] [--actors 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _records(url: str, collection: str) -> dict[str, Any]:
    import chromadb

    host, port = url.removeprefix("http://").split(":")
    col = chromadb.HttpClient(host=host, port=int(port)).get_collection(collection)
    got = col.get(include=["documents", "metadatas", "embeddings"])
    order = np.argsort(got["ids"])
    return {
        "ids": [got["ids"][i] for i in order],
        "documents": [got["documents"][i] for i in order],  # type: ignore[index]
        "metadatas": [got["metadatas"][i] for i in order],  # type: ignore[index]
        "embeddings": np.asarray(got["embeddings"])[order],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=REPO / "docs")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="OMP_NUM_THREADS of the CLI processes (Ray gives each actor num_cpus=1 thread); default torch's",
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/ray_index.json")
    args = parser.parse_args()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    chroma = Path(sys.executable).with_name("chroma")
    data = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    folder = data / args.folder.name  # a snapshot: edits to the folder during the run change nothing
    shutil.copytree(args.folder, folder)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        runs: dict[str, Any] = {}
        for name, extra in (("single", []), ("ray", ["--ray", str(args.actors)]), ("single-rerun", []),
                            ("ray-rerun", ["--ray", str(args.actors)])):
            collection = name.removesuffix("-rerun")
            command = [sys.executable, "-m", "kvemb_rag.cli", "index", str(folder), "--url", url,
                       "-c", collection, "--model", args.model, "--json", *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            summary = json.loads(proc.stdout)
            runs[name] = {"process_wall_s": round(wall, 2), "index_s": round(summary["seconds"], 2),
                          "chunks": summary["chunks"], "chunks_embedded": summary["chunks_embedded"],
                          "added": summary["added"], "unchanged": summary["unchanged"]}
            print(name, runs[name], file=sys.stderr, flush=True)
        a, b = _records(url, "single"), _records(url, "ray")
        equal = {
            "ids": a["ids"] == b["ids"],
            "documents": a["documents"] == b["documents"],
            "metadatas": a["metadatas"] == b["metadatas"],
            "embeddings_max_abs_diff": float(np.abs(a["embeddings"] - b["embeddings"]).max()),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    result = {
        "folder": str(args.folder.relative_to(REPO)) if args.folder.is_relative_to(REPO) else str(args.folder),
        "model": args.model,
        "actors": args.actors,
        "driver_threads": args.threads or "torch default (all cores)",
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "records_equal": equal,
        "ray_over_single_process_wall": round(runs["ray"]["process_wall_s"] / runs["single"]["process_wall_s"], 2),
        "ray_over_single_index_time": round(runs["ray"]["index_s"] / runs["single"]["index_s"], 2),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
