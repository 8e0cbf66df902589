"""Dev study of the store's search modes: dense, lexical, hybrid fusions, against BM25 (nDCG@10, intervals).

For each model and BEIR folder, the corpus is indexed into a persistent store with the product's own
chunking (``KVStore.add_documents``; resumable: a killed run re-run embeds only what is missing), then every
test query is scored by:

* ``bm25-doc``: bm25s over whole documents (Lucene BM25, k1=1.2, b=0.75, English stopwords, Snowball
  stemming) -- the keyword baseline to beat; ``bm25-doc-nostem``: the same without stemming;
* ``lexical``: the store's lexical leg (the same BM25 over the stored chunks and over their documents, mixed
  with the shipped ``document_weight``; a document scores as its best chunk) -- read from the store's own
  :class:`~kvemb_rag.store.lexical.LexicalIndex`; ``lexical@a``: the same with document weight ``a``;
* ``dense``: cosine similarity of the stored chunk vectors with ``encode_query`` (exact search);
* ``hybrid`` with every fusion of a grid (method x dense weight x candidate depth), through the product's own
  :func:`kvemb_rag.store.search.fuse` on the same candidates the store takes (the ``depth`` best chunks of
  each leg, both legs scored exactly on their union).

Documents score as their best chunk; nDCG@10 is trec_eval's. Intervals: 95% paired bootstrap over queries
(2,000 resamples) of the difference to ``bm25-doc`` and to ``dense``.

    python -m benchmarks.hybrid_study --model smollm2-135m-instruct --data ../shared/data/scifact \
        --stores /tmp/hybrid-stores --out benchmarks/hybrid_study
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEPTHS = (50, 100, 200)
METHODS = ("minmax", "zscore", "rrf")
BOOTSTRAP = 2000
# Weight of the document-level BM25 in a chunk's lexical score (0: the chunk alone, 1: its document alone).
ALPHAS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)


def bootstrap_interval(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` (paired per query) and its 95% bootstrap interval."""
    diff = np.asarray(a) - np.asarray(b)  # (queries,)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)  # (resamples,)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def best_chunk_run(ranked: Sequence[tuple[str, float]], doc_of: Mapping[str, str], k: int = 10) -> dict[str, float]:
    """Documents of a chunk ranking, each at its best chunk's rank, the first ``k``; scores keep the order."""
    run: dict[str, float] = {}
    for record_id, _ in ranked:
        doc = doc_of[record_id]
        if doc not in run:
            run[doc] = float(-len(run))  # rank order as score (ties impossible)
            if len(run) == k:
                break
    return run


def build_store(model: str, data: Any, db: Path, dtype: str | None) -> None:
    from kvemb_rag import KVEmbedder
    from kvemb_rag.store import Document, KVStore

    embedder = KVEmbedder(model, dtype=dtype)
    documents = [Document(doc_id, text) for doc_id, text in data.corpus.items() if text.strip()]
    with KVStore(db, collection=data.name, embedder=embedder) as store:
        summary = store.add_documents(documents)
        print(json.dumps({"indexed": data.name, "chunks": summary.chunks, "seconds": round(summary.seconds)}))


def subcorpus(data: Any, first: int | None) -> Any:
    """``data`` with its corpus cut to the judged documents and the first ``first`` others (None: all)."""
    if first is None:
        return data
    import dataclasses

    judged = {doc for judgements in data.qrels.values() for doc in judgements}
    keep = [doc for n, doc in enumerate(data.corpus) if n < first or doc in judged]
    return dataclasses.replace(data, corpus={doc: data.corpus[doc] for doc in keep})


def study(model: str, folder: Path, db: Path, dtype: str | None, first: int | None = None) -> dict[str, Any]:
    import bm25s
    import Stemmer

    from kvemb_rag.evaluation import load_beir
    from kvemb_rag.evaluation.metrics import ndcg_at_k
    from kvemb_rag.store import Fusion, KVStore
    from kvemb_rag.store.lexical import LEXICAL_SETTINGS
    from kvemb_rag.store.search import fuse

    data = subcorpus(load_beir(folder, "test"), first)
    build_store(model, data, db, dtype)
    with KVStore(db, collection=data.name) as store:
        embedder = store.load_embedder()
        col = store._require_collection().chroma
        got = col.get(include=["embeddings", "metadatas"])
        # Only the records of this corpus (a collection may hold more documents of a larger sample).
        rows = [n for n, m in enumerate(got["metadatas"] or []) if str(m["doc_id"]) in data.corpus]
        ids = [got["ids"][n] for n in rows]
        doc_of = {ids[n]: str(got["metadatas"][r]["doc_id"]) for n, r in enumerate(rows)}  # type: ignore[index]
        vectors = np.asarray(got["embeddings"], dtype=np.float32)[rows]  # (chunks, dim)
        index = store.lexical_index()
        position = {i: n for n, i in enumerate(index.ids)}
        order = np.array([position[i] for i in ids])  # lexical index order -> this order
        qids = list(data.queries)
        started = time.perf_counter()
        queries = embedder.encode_query([data.queries[q] for q in qids], show_progress_bar=False)  # (Q, dim)
        query_seconds = time.perf_counter() - started
        layers = list(embedder.layers)
        dense = queries @ vectors.T  # (Q, chunks)
        chunk_leg, document_leg = np.zeros_like(dense), np.zeros_like(dense)  # (Q, chunks) each
        for n, q in enumerate(qids):
            legs = index.leg_scores(data.queries[q])
            if legs is not None:
                chunk_leg[n], document_leg[n] = legs[0][order], legs[1][order]
    runs: dict[str, dict[str, dict[str, float]]] = {}
    # Whole-document BM25 baselines.
    doc_ids = list(data.corpus)
    for name, stemmer in (("bm25-doc", Stemmer.Stemmer("english")), ("bm25-doc-nostem", None)):
        retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        retriever.index(
            bm25s.tokenize([data.corpus[d] for d in doc_ids], stopwords="en", stemmer=stemmer, show_progress=False),
            show_progress=False,
        )
        tokens = bm25s.tokenize([data.queries[q] for q in qids], stopwords="en", stemmer=stemmer,
                                return_ids=False, show_progress=False)
        runs[name] = {}
        for q, query_tokens in zip(qids, tokens, strict=True):
            scores = retriever.get_scores(list(query_tokens)) if query_tokens else np.zeros(len(doc_ids))
            top = np.argsort(-scores, kind="stable")[:10]
            runs[name][q] = {doc_ids[i]: float(scores[i]) for i in top if scores[i] > 0}
    fusions = [Fusion(m, w, d) for m in METHODS for w in WEIGHTS for d in DEPTHS]
    col_of = {i: c for c, i in enumerate(ids)}
    runs["dense"] = {}
    for n, q in enumerate(qids):
        d_order = np.argsort(-dense[n], kind="stable")  # (chunks,)
        runs["dense"][q] = best_chunk_run([(ids[i], dense[n, i]) for i in d_order[:400]], doc_of)
    for alpha in ALPHAS:
        lexical = (1 - alpha) * chunk_leg + alpha * document_leg  # (Q, chunks)
        suffix = "" if alpha == LEXICAL_SETTINGS["document_weight"] else f"@{alpha}"
        for name in (f"lexical{suffix}", *(f"{f.method}/{f.weight}/{f.depth}{suffix}" for f in fusions)):
            runs[name] = {}
        for n, q in enumerate(qids):
            d_order = np.argsort(-dense[n], kind="stable")  # (chunks,)
            l_order = np.argsort(-lexical[n], kind="stable")
            lexical_ranked = [(ids[i], lexical[n, i]) for i in l_order[:400] if lexical[n, i] > 0]
            runs[f"lexical{suffix}"][q] = best_chunk_run(lexical_ranked, doc_of) if lexical_ranked else runs["dense"][q]
            for fusion in fusions:
                name = f"{fusion.method}/{fusion.weight}/{fusion.depth}{suffix}"
                d_top = [ids[i] for i in d_order[: fusion.depth]]
                l_top = [ids[i] for i in l_order[: fusion.depth] if lexical[n, i] > 0]
                if not l_top:  # no lexical match: dense ranking (as the store does)
                    runs[name][q] = runs["dense"][q]
                    continue
                union = dict.fromkeys(d_top + l_top)
                candidates = {i: (float(dense[n, col_of[i]]), float(lexical[n, col_of[i]])) for i in union}
                runs[name][q] = best_chunk_run(fuse(candidates, d_top, l_top, fusion), doc_of)
    per_query = {name: ndcg_at_k(data.qrels, run, k=10) for name, run in runs.items()}
    judged = sorted(per_query["bm25-doc"])
    table = {}
    for name, values in per_query.items():
        scores = [values.get(q, 0.0) for q in judged]
        row = {"ndcg@10": round(float(np.mean(scores)), 4)}
        for ref in ("bm25-doc", "dense", "lexical"):
            mean, low, high = bootstrap_interval(scores, [per_query[ref].get(q, 0.0) for q in judged])
            row[f"vs {ref}"] = [round(mean, 4), round(low, 4), round(high, 4)]
        table[name] = row
    return {
        "model": model,
        "dataset": data.name,
        "corpus": len(data.corpus),
        "corpus_sample": "all" if first is None else f"judged + first {first}",
        "queries": len(judged),
        "chunks": len(ids),
        "layers": layers,
        "dtype": dtype or "default",
        "document_weight": LEXICAL_SETTINGS["document_weight"],
        "query_encode_seconds": round(query_seconds, 1),
        "results": table,
    }


def _by_weight(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A result's rows named with their lexical document weight spelled out (``lexical@0.8``, ``.../200@0.8``)."""
    shipped = result["document_weight"]
    rows: dict[str, dict[str, Any]] = {}
    for name, row in result["results"].items():
        if (name.startswith("lexical") or "/" in name) and "@" not in name:
            name = f"{name}@{shipped}"
        rows[name] = row
    return rows


def report(folder: Path) -> str:
    """Markdown tables of the study's results in ``folder``, for the shipped settings."""
    from kvemb_rag.store.lexical import LEXICAL_SETTINGS
    from kvemb_rag.store.search import DEFAULT_FUSION

    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    alpha = LEXICAL_SETTINGS["document_weight"]
    shipped = f"{DEFAULT_FUSION.method}/{DEFAULT_FUSION.weight}/{DEFAULT_FUSION.depth}@{alpha}"

    def cell(row: dict[str, Any], ref: str) -> str:
        mean, low, high = row[f"vs {ref}"]
        return f"{row['ndcg@10']:.3f} ({mean:+.3f} [{low:+.3f}, {high:+.3f}])"

    lines = [
        "| model | dataset (queries, corpus, chunks) | BM25 | BM25 unstemmed | lexical: chunk only | **lexical** "
        "(shipped) | dense | RRF 50/50 | **hybrid** (shipped) vs BM25 | hybrid vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        rows = _by_weight(result)
        lines.append(
            f"| {result['model']} | {result['dataset']} ({result['queries']}, {result['corpus']}, {result['chunks']}) "
            f"| {rows['bm25-doc']['ndcg@10']:.3f} | {cell(rows['bm25-doc-nostem'], 'bm25-doc')} "
            f"| {cell(rows['lexical@0.0'], 'bm25-doc')} | {cell(rows[f'lexical@{alpha}'], 'bm25-doc')} "
            f"| {rows['dense']['ndcg@10']:.3f} | {cell(rows[f'rrf/0.5/100@{alpha}'], 'bm25-doc')} "
            f"| {cell(rows[shipped], 'bm25-doc')} | {cell(rows[shipped], 'dense')} |"
        )
    lines += ["", f"Mean nDCG@10 over the {len(results)} model x dataset runs, lexical document weight {alpha}:", ""]
    lines += ["| fusion | " + " | ".join(f"dense weight {w}" for w in WEIGHTS) + " |"]
    lines += ["|---|" + "---|" * len(WEIGHTS)]
    for method in METHODS:
        for depth in DEPTHS:
            means = [
                np.mean([_by_weight(r)[f"{method}/{w}/{depth}@{alpha}"]["ndcg@10"] for r in results]) for w in WEIGHTS
            ]
            lines.append(f"| {method}, depth {depth} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    lines += ["", "Mean nDCG@10 of the lexical leg by document weight:", ""]
    lines += ["| document weight | " + " | ".join(str(a) for a in ALPHAS) + " |", "|---|" + "---|" * len(ALPHAS)]
    lines.append(
        "| mean | "
        + " | ".join(f"{np.mean([_by_weight(r)[f'lexical@{a}']['ndcg@10'] for r in results]):.4f}" for a in ALPHAS)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--data", nargs="+", default=[], help="BEIR folders")
    parser.add_argument("--stores", help="folder of the persistent study stores")
    parser.add_argument("--dtype", default=None, help="engine dtype (the study used bfloat16 on this CPU)")
    parser.add_argument("--first", type=int, default=None,
                        help="corpus sample: the judged documents and the first N others (default: all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "hybrid_study"))
    parser.add_argument("--report", action="store_true", help="only print the tables of the results in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(out), end="")
        return
    out.mkdir(parents=True, exist_ok=True)
    for folder in args.data:
        result = study(args.model, Path(folder), Path(args.stores) / args.model, args.dtype, args.first)
        path = out / f"{args.model}.{result['dataset']}.json"
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        best = max((k for k in result["results"] if "/" in k), key=lambda k: result["results"][k]["ndcg@10"])
        lexical = [k for k in result["results"] if k.startswith("lexical")]
        shown = ("bm25-doc", "bm25-doc-nostem", "dense", *lexical, best)
        for name in shown:
            print(result["dataset"], name, result["results"][name])


if __name__ == "__main__":
    main()
