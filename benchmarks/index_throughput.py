"""``kvemb index`` throughput on this repository's docs with the bundled model, float32 and bfloat16 (issue 19).

For each dtype, in one run:

* ``kvemb index docs/ README.md`` as a user runs it (a subprocess, wall clock: model load, reading,
  chunking, embedding, the Chroma writes and the BM25 index);
* the same indexing in-process, timed without the model load;
* the reference point: sentence-transformers (last-token pooling, the same weights and dtype, batches of 16)
  encoding the very chunk texts the store holds, with the same template; no store, no chunking.

Throughput is chunk tokens (template included) per second. Ratios are from one run on one machine.

    .venv/bin/python -m benchmarks.index_throughput [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "index_throughput.json"
PATHS = [ROOT / "docs", ROOT / "README.md"]
logger = logging.getLogger("index_throughput")


def _gguf_folder(gguf: str) -> Path:
    """The HF folder kvemb-rag converted a GGUF file into (sentence-transformers cannot read GGUF)."""
    from kvemb_rag.engine.models import cache_directory

    for marker in (cache_directory() / "gguf").glob("*/kvemb-gguf-source.json"):
        if json.loads(marker.read_text())["gguf"] == gguf:
            return marker.parent
    raise FileNotFoundError(f"no converted folder for {gguf} under {cache_directory() / 'gguf'}")


def cli_seconds(model: str, dtype: str, db: Path) -> tuple[float, dict[str, Any]]:
    """Wall clock of ``kvemb index`` in a fresh process, and its JSON summary."""
    command = [
        sys.executable,
        "-m",
        "kvemb_rag.cli",
        "index",
        *map(str, PATHS),
        "--db",
        str(db),
        "--model",
        model,
        "--dtype",
        dtype,
        "--json",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "NO_COLOR": "1"})
    return time.perf_counter() - start, json.loads(done.stdout)


def measure(model: str, dtype: str, work: Path) -> dict[str, Any]:
    """One dtype: the CLI run, the in-process run and sentence-transformers on the stored chunks."""
    from sentence_transformers import SentenceTransformer, models

    from kvemb_rag import KVEmbedder
    from kvemb_rag.sources import read_paths, sync_reads
    from kvemb_rag.store import KVStore

    cli_s, summary = cli_seconds(model, dtype, work / f"cli-{dtype}")
    emb = KVEmbedder(model, dtype=dtype, show_progress_bar=False)
    reads = read_paths(PATHS)
    with KVStore(work / f"lib-{dtype}", embedder=emb) as store:
        start = time.perf_counter()
        sync_reads(store, reads)
        index_s = time.perf_counter() - start
        chunks = store._require_collection().chroma.get(include=["documents"])["documents"] or []
    prompted = [emb.format(c, "document") for c in chunks]
    tokens = sum(emb.count_tokens(c, "document") for c in chunks)
    folder = _gguf_folder(emb._loaded.source) if emb._loaded.source.endswith(".gguf") else Path(emb._loaded.source)
    transformer = models.Transformer(str(folder), max_seq_length=4096, model_args={"dtype": getattr(torch, dtype)})
    transformer.tokenizer.padding_side = "right"
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    st = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    st.encode(prompted[:16], batch_size=16)  # warm-up
    start = time.perf_counter()
    st.encode(prompted, batch_size=16, normalize_embeddings=True)
    st_s = time.perf_counter() - start
    result = {
        "dtype": dtype,
        "chunks": len(chunks),
        "tokens": tokens,
        "cli_seconds": cli_s,
        "index_seconds": index_s,
        "sentence_transformers_seconds": st_s,
        "cli_tokens_per_s": tokens / cli_s,
        "index_tokens_per_s": tokens / index_s,
        "sentence_transformers_tokens_per_s": tokens / st_s,
        "cli_summary": summary,
    }
    logger.info("%s", {k: v for k, v in result.items() if k != "cli_summary"})
    return result


def report(saved: dict[str, Any]) -> str:
    lines = [
        f"Model {saved['model']}, {saved['machine']}; {saved['runs'][0]['chunks']} chunks, "
        f"{saved['runs'][0]['tokens']} tokens (docs/ + README.md).",
        "",
        "| dtype | `kvemb index` (load included) | indexing in-process | sentence-transformers, encode only |"
        " index / sentence-transformers |",
        "|---|---|---|---|---|",
    ]
    for r in saved["runs"]:
        ratio = r["index_tokens_per_s"] / r["sentence_transformers_tokens_per_s"]
        lines.append(
            f"| {r['dtype']} | {r['cli_tokens_per_s']:.0f} tokens/s ({r['cli_seconds']:.1f} s) | "
            f"{r['index_tokens_per_s']:.0f} tokens/s | {r['sentence_transformers_tokens_per_s']:.0f} tokens/s | "
            f"{ratio:.2f} |"
        )
    by = {r["dtype"]: r for r in saved["runs"]}
    if {"float32", "bfloat16"} <= set(by):
        speedup = by["bfloat16"]["index_tokens_per_s"] / by["float32"]["index_tokens_per_s"]
        lines += ["", f"bfloat16 / float32 indexing throughput: {speedup:.2f}x."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--report", action="store_true", help="print the saved run's table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.report:
        import platform

        with tempfile.TemporaryDirectory(prefix="kvemb-index-bench-") as tmp:
            runs = [measure(args.model, d, Path(tmp)) for d in ("float32", "bfloat16")]
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
        OUT.write_text(json.dumps({"model": args.model, "machine": machine, "runs": runs}, indent=1) + "\n")
    print(report(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
