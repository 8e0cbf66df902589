"""The dev evaluation the studies share: seeded dev sets, per-item task outputs and paired bootstrap intervals.

Every task is scored per item so two configurations embedded on the same texts get a 95% paired-bootstrap
interval of their difference:

* ``sts``: the whole STS-B **dev** set (1,500 pairs), Spearman (resampling pairs);
* ``retrieval``: SciFact **test** (150 queries over their judged abstracts plus distractors, 500
  abstracts) and Cranfield (100 queries, 500 documents), texts cut to 64 words; nDCG@10 per query;
* ``classification``: Banking77 train, 4 utterances per intent (308), 4-fold logistic regression,
  per-utterance correctness;
* ``clustering``: the same utterances, k-means V-measure (resampling utterances, clusterings fixed).

The dev average is the mean of the four families. Used by ``benchmarks.dtype_study`` and
``benchmarks.dense_study``; never a test split, never ``../shared/heldout``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from benchmarks.method_study import DATA, _retrieval_subset, dev_sets

FAMILIES = ("sts", "retrieval", "classification", "clustering")
logger = logging.getLogger("dev_eval")


def dev_data(seed: int = 0) -> dict[str, Any]:
    """The dev texts: STS-B dev whole, two retrieval subsets, the method study's Banking77 sample."""
    from kvemb_rag.evaluation.data import load_beir, load_sts

    sts = load_sts(DATA / "sts" / "STSBenchmark" / "sts-dev.csv")
    scifact = _retrieval_subset(load_beir(DATA / "scifact", split="test"), 150, 500, 64, seed)
    cranfield = _retrieval_subset(load_beir(DATA / "cranfield" / "beir", split="test"), 100, 500, 64, seed)
    retrieval = tuple(_without_blank_documents(data) for data in (scifact, cranfield))
    return {"sts": sts, "retrieval": retrieval, "banking": dev_sets(seed).banking}


def _without_blank_documents(data: Any) -> Any:
    """The collection less its documents with no text (Cranfield has a few), which nothing can embed."""
    from kvemb_rag.evaluation.data import RetrievalData

    corpus = {d: t for d, t in data.corpus.items() if t.strip()}
    qrels = {q: {d: g for d, g in rels.items() if d in corpus} for q, rels in data.qrels.items()}
    return RetrievalData(data.name, corpus, data.queries, qrels)


def embed_all(emb: Any, dev: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every vector the tasks need, from one embedder (timed: ``seconds``)."""
    out: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    out["sts1"] = emb.encode(dev["sts"].sentences1, prompt_name="document")
    out["sts2"] = emb.encode(dev["sts"].sentences2, prompt_name="document")
    for data in dev["retrieval"]:
        out[f"{data.name}.queries"] = emb.encode_query(list(data.queries.values()))
        out[f"{data.name}.docs"] = emb.encode_document(list(data.corpus.values()))
    out["banking"] = emb.encode_document(dev["banking"].texts)
    out["seconds"] = np.array(time.perf_counter() - start)
    logger.info("embedded in %.0f s (%s)", float(out["seconds"]), emb)
    return out


def per_item(vectors: dict[str, np.ndarray], dev: dict[str, Any]) -> dict[str, Any]:
    """Per-item task outputs that the bootstrap resamples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from kvemb_rag.evaluation.metrics import exact_search, ndcg_at_k

    items: dict[str, Any] = {"sts_cos": np.sum(vectors["sts1"] * vectors["sts2"], axis=1)}
    ndcg: dict[str, float] = {}
    for data in dev["retrieval"]:
        run = exact_search(
            vectors[f"{data.name}.queries"],
            vectors[f"{data.name}.docs"],
            list(data.queries),
            list(data.corpus),
            top_k=100,
        )
        ndcg.update({f"{data.name}/{q}": v for q, v in ndcg_at_k(data.qrels, run).items()})
    items["ndcg"] = ndcg
    x, labels = vectors["banking"], np.asarray(dev["banking"].labels)
    correct = np.zeros(len(labels))
    for train, test in StratifiedKFold(4, shuffle=True, random_state=0).split(x, labels):
        classifier = LogisticRegression(max_iter=200, random_state=0).fit(x[train], labels[train])
        correct[test] = classifier.predict(x[test]) == labels[test]
    items["correct"] = correct
    from sklearn.cluster import KMeans

    items["clusters"] = KMeans(len(set(labels)), n_init=10, random_state=42).fit_predict(x)
    return items


def _family_scores(
    items: dict[str, Any], dev: dict[str, Any], pairs: np.ndarray, queries: list[str], utterances: np.ndarray
) -> dict[str, float]:
    from scipy.stats import spearmanr
    from sklearn.metrics import v_measure_score

    gold = np.asarray(dev["sts"].scores)
    labels = np.asarray(dev["banking"].labels)
    return {
        "sts": float(spearmanr(items["sts_cos"][pairs], gold[pairs]).statistic),
        "retrieval": float(np.mean([items["ndcg"][q] for q in queries])),
        "classification": float(items["correct"][utterances].mean()),
        "clustering": float(v_measure_score(labels[utterances], items["clusters"][utterances])),
    }


def compare(
    a: dict[str, Any], b: dict[str, Any], dev: dict[str, Any], rounds: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Scores of ``a`` and ``b`` per family and the dev average, with the 95% paired-bootstrap interval of b - a."""
    n_pairs, n_utt = len(dev["sts"].scores), len(dev["banking"].labels)
    queries = sorted(a["ndcg"])
    full = (np.arange(n_pairs), queries, np.arange(n_utt))
    sa, sb = _family_scores(a, dev, *full), _family_scores(b, dev, *full)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {f: [] for f in (*FAMILIES, "average")}
    for _ in range(rounds):
        sample = (
            rng.integers(0, n_pairs, n_pairs),
            [queries[i] for i in rng.integers(0, len(queries), len(queries))],
            rng.integers(0, n_utt, n_utt),
        )
        ra, rb = _family_scores(a, dev, *sample), _family_scores(b, dev, *sample)
        for f in FAMILIES:
            draws[f].append(rb[f] - ra[f])
        draws["average"].append(float(np.mean([rb[f] - ra[f] for f in FAMILIES])))
    sa["average"], sb["average"] = float(np.mean(list(sa.values()))), float(np.mean(list(sb.values())))
    return {
        f: {
            "a": sa[f],
            "b": sb[f],
            "diff": sb[f] - sa[f],
            "low": float(np.percentile(draws[f], 2.5)),
            "high": float(np.percentile(draws[f], 97.5)),
        }
        for f in (*FAMILIES, "average")
    }
