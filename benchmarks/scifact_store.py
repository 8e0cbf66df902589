"""Index SciFact through :class:`kvemb_rag.store.KVStore` and score retrieval from the store (nDCG@10).

Documents are BEIR's ``title + " " + text`` (5,183 abstracts, read with
:func:`kvemb_rag.evaluation.load_beir`), added with ``KVStore.add_documents`` (chunked to the engine's
``max_length``, one record per chunk) into an on-disk Chroma store in a temporary folder. The 300 test
queries are run through ``KVStore.query(k=10, per_document=True)`` -- a document scores as its best chunk --
and nDCG@10 is computed as trec_eval's ``ndcg_cut.10`` (:func:`kvemb_rag.evaluation.metrics.ndcg_at_k`).

Each ``--max-length`` is tried in turn; a limit the model cannot take (stories260K has a 512-token context)
is reported as refused by the engine, with its message. A second, unchanged ``add_documents`` is timed too
(it should add nothing and embed nothing).

    python -m benchmarks.scifact_store                                    # tiny model, 512 and 4096
    python -m benchmarks.scifact_store --model Qwen/Qwen3-0.6B --max-length 512 --json out.json

Prints one JSON object (and writes it to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
DEFAULT_MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K" / "hf"


def run_one(data: Any, model: str, max_length: int, db: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kvemb_rag import KVEmbedder
    from kvemb_rag.evaluation.metrics import ndcg_at_k
    from kvemb_rag.store import Document, KVStore

    result: dict[str, Any] = {"max_length": max_length}
    started = time.perf_counter()
    try:
        embedder = KVEmbedder(model, max_length=max_length, device=args.device, batch_size=args.batch_size)
    except ValueError as exc:
        result.update(status="refused by the engine", error=str(exc))
        return result
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    result["layers"] = list(embedder.layers)
    documents = [Document(doc_id, text) for doc_id, text in data.corpus.items() if text.strip()]
    documents = documents[: args.limit] if args.limit else documents
    result["documents"] = len(documents)
    with KVStore(db, collection=f"scifact-{max_length}", embedder=embedder) as store:
        summary = store.add_documents(documents)
        result["index_seconds"] = round(summary.seconds, 1)
        result["chunks"] = summary.chunks
        result["records"] = store.count()
        result["chunks_per_second"] = round(summary.chunks_embedded / max(summary.seconds, 1e-9), 1)
        again = store.add_documents(documents)
        result["reindex_unchanged"] = {
            "seconds": round(again.seconds, 1),
            "added": again.added,
            "unchanged": again.unchanged,
            "chunks_embedded": again.chunks_embedded,
        }
        started = time.perf_counter()
        run: dict[str, dict[str, float]] = {}
        for qid, text in data.queries.items():
            hits = store.query(text, k=args.k, per_document=True)
            run[qid] = {hit.doc_id: hit.score for hit in hits}
        result["query_seconds"] = round(time.perf_counter() - started, 1)
    per_query = ndcg_at_k(data.qrels, run, k=args.k)
    result["queries"] = len(per_query)
    result[f"ndcg@{args.k}"] = round(sum(per_query.values()) / len(per_query), 4)
    result["status"] = "ok"
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR folder (corpus, queries, qrels)")
    parser.add_argument("--max-length", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--db", default=None, help="store folder (default: a temporary one, deleted)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--limit", type=int, default=None, help="smoke test: only the first N documents")
    args = parser.parse_args(argv)

    import torch

    from kvemb_rag.evaluation import load_beir

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_beir(args.data, args.split)
    out: dict[str, Any] = {
        "benchmark": "scifact via KVStore (per-document grouping)",
        "model": args.model,
        "corpus": len(data.corpus),
        "test_queries": len(data.queries),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="scifact-store-") as tmp:
        db = Path(args.db) if args.db else Path(tmp)
        for max_length in args.max_length:
            out["runs"].append(run_one(data, args.model, max_length, db, args))
            print(json.dumps(out["runs"][-1]), flush=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
