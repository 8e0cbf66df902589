"""What the lexical leg costs: indexing time with it against without it, and search latency at 100,000 chunks.

1. **Index time** (``--index``): SciFact abstracts (the first ``--docs``) indexed with the given model into a
   fresh store, in one run, twice: once as the product does it (records-version stamps before every write
   batch and a lexical rebuild at the end) and once with both switched off (dense-only indexing as it was).
   The ratio of the two wall times is reported, and so is the ratio computed from the lexical work measured
   directly inside the product run (stamps + rebuild), which is immune to the CPU noise of two long runs.
2. **Search latency** (``--latency``): a collection of ``--chunks`` records (text windows of ~30 words cut
   from the SciFact, Cranfield and QMSum texts in ../shared/data, cycled with shifted windows; random unit
   vectors of the model's width, stamped with the model's identity so that the store accepts it), then
   ``--queries`` SciFact queries searched in each mode: p50 / p99 wall time of ``KVStore.query`` (the query
   embedding included), and the time to build the lexical index from the records.

    python -m benchmarks.hybrid_costs --model smollm2-135m-instruct --json benchmarks/hybrid_costs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _texts() -> Iterator[str]:
    from kvemb_rag.evaluation import load_beir

    for folder in (DATA / "scifact", DATA / "cranfield" / "beir"):
        yield from load_beir(folder, "test").corpus.values()
    for path in sorted((DATA / "qmsum" / "meetings").rglob("*.json*")):
        yield path.read_text(encoding="utf-8", errors="replace")


def windows(n: int, words: int = 30) -> list[str]:
    """``n`` text windows of ``words`` words, cycling over the dev texts with a shifted start each pass."""
    tokens = [w for text in _texts() for w in text.split()]
    out: list[str] = []
    shift = 0
    while len(out) < n:
        for start in range(shift, len(tokens) - words, words):
            out.append(" ".join(tokens[start : start + words]))
            if len(out) == n:
                break
        shift += 7
    return out


def index_time(model: str, docs: int, dtype: str | None) -> dict[str, Any]:
    import kvemb_rag.store.collection as collection
    from kvemb_rag import KVEmbedder
    from kvemb_rag.evaluation import load_beir
    from kvemb_rag.store import Document, KVStore
    from kvemb_rag.store.collection import mark_records_changed

    data = load_beir(DATA / "scifact", "test")
    documents = [Document(i, t) for i, t in list(data.corpus.items())[:docs]]
    embedder = KVEmbedder(model, dtype=dtype)
    embedder.encode(["warm up the kernels"] * 4)
    result: dict[str, Any] = {"documents": len(documents), "model": model, "dtype": str(embedder.dtype)}
    stamps = {"calls": 0, "seconds": 0.0}

    def timed_mark(col: Any) -> None:
        started = time.perf_counter()
        mark_records_changed(col)
        stamps["seconds"] += time.perf_counter() - started
        stamps["calls"] += 1

    with tempfile.TemporaryDirectory() as tmp:
        # Product run (the stamps timed).
        collection.mark_records_changed = timed_mark  # type: ignore[assignment]
        with KVStore(Path(tmp) / "hybrid", embedder=embedder) as store:
            started = time.perf_counter()
            summary = store.add_documents(documents)
            with_lexical = time.perf_counter() - started
            index_folder = store._lexical.folder(store._require_collection())
            shutil.rmtree(index_folder)
            store._lexical._loaded.clear()  # forget the in-memory copy too: a real rebuild from the records
            started = time.perf_counter()
            store.lexical_index()
            rebuild = time.perf_counter() - started
        # Dense-only run: no stamps, no rebuild.
        collection.mark_records_changed = lambda col: None  # type: ignore[assignment]
        original = KVStore._refresh_lexical
        KVStore._refresh_lexical = lambda self, reason=None: None  # type: ignore[assignment,method-assign,misc,return-value]
        try:
            with KVStore(Path(tmp) / "dense", embedder=embedder) as store:
                started = time.perf_counter()
                store.add_documents(documents)
                dense_only = time.perf_counter() - started
        finally:
            KVStore._refresh_lexical = original  # type: ignore[method-assign]
            collection.mark_records_changed = mark_records_changed
    lexical_work = rebuild + stamps["seconds"]
    result.update(
        chunks=summary.chunks,
        seconds_with_lexical=round(with_lexical, 2),
        seconds_dense_only=round(dense_only, 2),
        ratio_wall=round(with_lexical / dense_only, 4),
        lexical_rebuild_seconds=round(rebuild, 3),
        stamp_calls=stamps["calls"],
        stamp_seconds=round(stamps["seconds"], 3),
        ratio_from_lexical_work=round(with_lexical / (with_lexical - lexical_work), 4),
    )
    return result


def latency(model: str, chunks: int, queries: int, dtype: str | None) -> dict[str, Any]:
    import chromadb

    from kvemb_rag import KVEmbedder
    from kvemb_rag.evaluation import load_beir
    from kvemb_rag.store import SEARCH_MODES, KVStore

    embedder = KVEmbedder(model, dtype=dtype)
    texts = windows(chunks)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"chunks": len(texts), "model": model, "queries": queries}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        with KVStore(db, embedder=embedder) as store:
            col = store._writable_collection().chroma  # created with the embedder's identity
            width = len(embedder.encode_query("width"))
            started = time.perf_counter()
            batch = int(store.client.get_max_batch_size())
            for begin in range(0, len(texts), batch):
                part = texts[begin : begin + batch]
                vectors = rng.standard_normal((len(part), width)).astype(np.float32)  # (n, dim)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                col.upsert(
                    ids=[f"w{begin + i}::0::x" for i in range(len(part))],
                    embeddings=vectors,
                    documents=part,
                    metadatas=[{"doc_id": f"w{begin + i}", "chunk_index": 0} for i in range(len(part))],
                )
            result["write_seconds"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            store.lexical_index()
            result["lexical_build_seconds"] = round(time.perf_counter() - started, 1)
            asked = list(load_beir(DATA / "scifact", "test").queries.values())[:queries]
            for text in asked[:3]:
                for mode in SEARCH_MODES:
                    store.query(text, k=10, mode=mode)  # warm up
            timings: dict[str, list[float]] = {mode: [] for mode in SEARCH_MODES}
            for text in asked:
                for mode in SEARCH_MODES:  # interleaved: the same machine state for every mode
                    started = time.perf_counter()
                    store.query(text, k=10, mode=mode)
                    timings[mode].append(time.perf_counter() - started)
            started = time.perf_counter()
            for text in asked:
                embedder.encode_query(text)
            result["query_embedding_ms_mean"] = round(1000 * (time.perf_counter() - started) / len(asked), 1)
        del chromadb
    for mode, values in timings.items():
        result[mode] = {
            "p50_ms": round(1000 * float(np.percentile(values, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(values, 99)), 1),
        }
    result["hybrid_over_dense_p50"] = round(result["hybrid"]["p50_ms"] / result["dense"]["p50_ms"], 2)
    result["hybrid_over_dense_p99"] = round(result["hybrid"]["p99_ms"] / result["dense"]["p99_ms"], 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import torch

    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": torch.get_num_threads(),
    }
    if not args.skip_index:
        out["index_time"] = index_time(args.model, args.docs, args.dtype)
        print(json.dumps(out["index_time"]), flush=True)
    if not args.skip_latency:
        out["latency"] = latency(args.model, args.chunks, args.queries, args.dtype)
        print(json.dumps(out["latency"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
