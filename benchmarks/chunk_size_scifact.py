"""The store's chunk size on SciFact (dev data): document retrieval by each document's best chunk.

A subset keeps it affordable on a CPU: the first ``--queries`` test queries, their relevant abstracts and
``--distractors`` other abstracts (fixed seed). Each abstract (title + text) is chunked at each size, every
chunk is embedded, and a document scores its best chunk (what ``KVStore.query(per_document=True)`` does).
Metrics: nDCG@10 and recall@10 over documents. A re-run skips the sizes already measured.

    python -m benchmarks.chunk_size --task scifact --sizes 256,128,512
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def load(n_queries: int, n_distractors: int) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    queries = {}
    for line in (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        queries[record["_id"]] = record["text"]
    qrels: dict[str, set[str]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, doc, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(doc)
    chosen = sorted(qrels, key=int)[:n_queries]
    corpus_all = {}
    for line in (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        corpus_all[record["_id"]] = f"{record['title']}\n\n{record['text']}".strip()
    relevant = set().union(*(qrels[q] for q in chosen))
    others = sorted(set(corpus_all) - relevant)
    random.Random(0).shuffle(others)
    keep = sorted(relevant) + others[:n_distractors]
    return {d: corpus_all[d] for d in keep}, {q: queries[q] for q in chosen}, {q: qrels[q] for q in chosen}


def measure(embedder: Any, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, set[str]],
            size: int) -> dict[str, Any]:
    started = time.perf_counter()
    owners, texts, n_tokens = [], [], []
    for doc_id, text in corpus.items():
        for chunk in embedder.chunk(text, "document", max_tokens=size):
            owners.append(doc_id)
            texts.append(chunk.text)
            n_tokens.append(chunk.n_tokens)
    vectors = embedder.encode_document(texts, show_progress_bar=False)  # (n, dim)
    q_ids = list(queries)
    q_vectors = embedder.encode_query([queries[q] for q in q_ids], show_progress_bar=False)  # (m, dim)
    scores = q_vectors @ vectors.T  # (m, n)
    docs = sorted(set(owners))
    column = {d: i for i, d in enumerate(docs)}
    best = np.full((len(q_ids), len(docs)), -np.inf)  # (m, docs): each document's best chunk
    for j, owner in enumerate(owners):
        best[:, column[owner]] = np.maximum(best[:, column[owner]], scores[:, j])
    ndcgs, recalls = [], []
    for qi, qid in enumerate(q_ids):
        top = [docs[i] for i in np.argsort(-best[qi])[:10]]
        gains = [1.0 if d in qrels[qid] else 0.0 for d in top]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(10, len(qrels[qid]))))
        ndcgs.append(dcg / ideal)
        recalls.append(sum(gains) / len(qrels[qid]))
    return {
        "size": size, "chunks": len(texts), "chunks_per_doc": len(texts) / len(docs),
        "mean_tokens": float(np.mean(n_tokens)), "ndcg@10": float(np.mean(ndcgs)),
        "recall@10": float(np.mean(recalls)), "seconds": round(time.perf_counter() - started, 1),
    }
