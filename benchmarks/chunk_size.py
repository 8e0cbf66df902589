"""The store's chunk size, measured: passage retrieval on QMSum (dev data) at several chunk sizes.

A RAG pipeline hands the LLM the top retrieved chunks within a context budget. What matters is how much of
the evidence for a question lands in that budget, so chunk sizes are compared at an equal token budget:

* ``evidence_recall@B``: chunks are taken in rank order while their tokens fit ``B`` (at least one); the
  score is the fraction of the query's relevant transcript span (QMSum's ``relevant_text_span`` turns,
  in characters) that the taken chunks cover, averaged over queries;
* ``ndcg@10``: a chunk is relevant when it overlaps the span (favours large chunks, shown for context);
* ``hit@1``: the first chunk overlaps the span.

Each is reported with the query's own meeting as the candidate set (``meeting/``, QMSum's "locate the
evidence" setting) and with every chunk of every meeting (``corpus/``). Corpus: the first ``--meetings``
QMSum validation transcripts; queries: their specific queries. Results are written after each size, and a
re-run skips the sizes already measured.

    python -m benchmarks.chunk_size --task qmsum --meetings 5 --sizes 256,512,128
    python -m benchmarks.chunk_size --task scifact --queries 50 --distractors 250 --sizes 256,128,512
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QMSUM = REPO.parent / "shared" / "data" / "qmsum"


def load(meetings: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Transcripts (``"speaker: content"`` lines) and specific queries with their evidence char spans."""
    corpus: dict[str, str] = {}
    queries: list[dict[str, Any]] = []
    lines = [json.loads(x) for x in (QMSUM / "val.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    for number, record in enumerate(lines[:meetings]):
        doc_id = f"meeting{number:02d}"
        starts, parts, offset = [], [], 0
        for turn in record["meeting_transcripts"]:
            line = f"{turn['speaker']}: {turn['content']}"
            starts.append(offset)
            parts.append(line)
            offset += len(line) + 1
        text = "\n".join(parts)
        corpus[doc_id] = text
        ends = [s + len(p) for s, p in zip(starts, parts, strict=True)]
        for q_number, query in enumerate(record["specific_query_list"]):
            spans = []
            for first, last in query["relevant_text_span"]:
                a, b = int(first), min(int(last), len(parts) - 1)
                spans.append((starts[a], ends[b]))
            queries.append({"id": f"{doc_id}/q{q_number}", "text": query["query"], "doc": doc_id, "spans": spans})
    return corpus, queries


def _covered(spans: list[tuple[int, int]], taken: list[tuple[int, int]]) -> float:
    total = sum(b - a for a, b in spans)
    if total == 0:
        return 0.0
    mask_len = max(b for _, b in spans)
    covered = np.zeros(mask_len, dtype=bool)
    for a, b in taken:
        covered[a:b] = True
    hit = sum(int(covered[a:b].sum()) for a, b in spans)
    return hit / total


def _rank_metrics(
    query: dict[str, Any], order: np.ndarray, chunks: list[tuple[Any, ...]], budget: int
) -> dict[str, float]:
    """Evidence recall within ``budget`` tokens, nDCG@10 and hit@1 of one ranking of chunk indices."""
    relevant = [
        chunks[i][0] == query["doc"] and any(chunks[i][1] < b and a < chunks[i][2] for a, b in query["spans"])
        for i in order
    ]
    used, taken = 0, []
    for i in order:
        if taken and used + chunks[i][3] > budget:
            break
        used += chunks[i][3]
        taken.append((chunks[i][1], chunks[i][2]) if chunks[i][0] == query["doc"] else None)
    recall = _covered(query["spans"], [t for t in taken if t is not None])
    gains = [1.0 if r else 0.0 for r in relevant[:10]]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(10, sum(relevant))))
    return {"recall": recall, "ndcg": dcg / ideal if ideal else 0.0, "hit": 1.0 if relevant[0] else 0.0}


def measure(embedder: Any, corpus: dict[str, str], queries: list[dict[str, Any]], size: int,
            budgets: list[int]) -> dict[str, Any]:
    """Chunk every transcript at ``size`` tokens; score each query within its meeting and over all of them."""
    started = time.perf_counter()
    chunks = []  # (doc, start, end, n_tokens, text)
    for doc_id, text in corpus.items():
        for c in embedder.chunk(text, "document", max_tokens=size):
            chunks.append((doc_id, c.start, c.end, c.n_tokens, c.text))
    vectors = embedder.encode_document([c[4] for c in chunks], show_progress_bar=False)  # (n, dim)
    q_vectors = embedder.encode_query([q["text"] for q in queries], show_progress_bar=False)  # (m, dim)
    scores = q_vectors @ vectors.T  # (m, n)
    owner = np.array([c[0] for c in chunks])
    out: dict[str, Any] = {"size": size, "chunks": len(chunks), "mean_tokens": float(np.mean([c[3] for c in chunks]))}
    for scope in ("meeting", "corpus"):
        for budget in budgets:
            rows = []
            for qi, query in enumerate(queries):
                order = np.argsort(-scores[qi])
                if scope == "meeting":  # QMSum's setting: locate the evidence inside the query's own meeting
                    order = order[owner[order] == query["doc"]]
                rows.append(_rank_metrics(query, order, chunks, budget))
            out[f"{scope}/evidence_recall@{budget}"] = float(np.mean([r["recall"] for r in rows]))
        out[f"{scope}/ndcg@10"] = float(np.mean([r["ndcg"] for r in rows]))
        out[f"{scope}/hit@1"] = float(np.mean([r["hit"] for r in rows]))
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["qmsum", "scifact"], default="qmsum")
    parser.add_argument("--model", default=None, help="default: the bundled default model")
    parser.add_argument("--sizes", default="128,256,512,1024")
    parser.add_argument("--budgets", default="1024", help="qmsum: context budgets in tokens")
    parser.add_argument("--meetings", type=int, default=5, help="qmsum: transcripts in the corpus")
    parser.add_argument("--queries", type=int, default=50, help="scifact: test queries")
    parser.add_argument("--distractors", type=int, default=250, help="scifact: abstracts besides the relevant ones")
    parser.add_argument("--output", default=None, help="default benchmarks/chunk_size[_scifact].json")
    args = parser.parse_args()

    from kvemb_rag import KVEmbedder
    from kvemb_rag.engine.models import default_model

    model = args.model or default_model()
    suffix = "" if args.task == "qmsum" else "_scifact"
    output = Path(args.output or REPO / "benchmarks" / f"chunk_size{suffix}.json")
    done: dict[str, Any] = json.loads(output.read_text()) if output.is_file() else {}
    embedder = KVEmbedder(model)
    if args.task == "qmsum":
        corpus, queries = load(args.meetings)
        budgets = [int(b) for b in args.budgets.split(",")]
        setup = {"meetings": args.meetings, "queries": len(queries), "budgets": budgets}

        def run(size: int) -> dict[str, Any]:
            return measure(embedder, corpus, queries, size, budgets)
    else:
        from benchmarks import chunk_size_scifact as scifact

        docs, claims, qrels = scifact.load(args.queries, args.distractors)
        setup = {"queries": len(claims), "documents": len(docs)}

        def run(size: int) -> dict[str, Any]:
            return scifact.measure(embedder, docs, claims, qrels, size)

    done.setdefault("setup", {"task": args.task, "model": model, "embedder": embedder.identity, **setup})
    results = done.setdefault("results", {})
    for size in (int(s) for s in args.sizes.split(",")):
        if str(size) in results:
            continue
        results[str(size)] = run(size)
        output.write_text(json.dumps(done, indent=2) + "\n")
        print(json.dumps(results[str(size)]), flush=True)


if __name__ == "__main__":
    main()
