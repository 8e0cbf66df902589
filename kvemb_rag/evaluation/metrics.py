"""Evaluation metrics, written to match the standard tools exactly.

* Retrieval: nDCG@k, Recall@k as ``pytrec_eval`` (trec_eval) computes them, MRR@k as BEIR / MTEB compute it.
  Ranking sorts by score descending, ties broken by document id descending (trec_eval's order). Graded
  relevance is the linear gain; the ideal DCG comes from the judgements. Only queries with judgements are
  evaluated (a run's other queries are ignored, as pytrec_eval does); a judged query whose grades are all
  zero counts as 0, as in pytrec_eval and BEIR.
* STS: Spearman correlation of cosine similarity with gold scores (``scipy.stats.spearmanr``), MTEB's
  ``cosine_spearman``.
* Classification: MTEB's protocol (see :func:`logistic_regression_accuracy`).
* Clustering: V-measure of k-means with one cluster per label.
"""

from __future__ import annotations

import importlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from kvemb_rag.errors import ConfigError, InputError

__all__ = [
    "ClassificationProtocol",
    "cosine_spearman",
    "exact_search",
    "kmeans_v_measure",
    "logistic_regression_accuracy",
    "mrr_at_k",
    "ndcg_at_k",
    "rank_documents",
    "recall_at_k",
    "retrieval_scores",
]

#: Query id -> {document id: relevance grade}; the retrieval metrics below take it with a run and a cut-off k.
Qrels = Mapping[str, Mapping[str, int]]
#: Query id -> {document id: score}.
Run = Mapping[str, Mapping[str, float]]


def optional_import(module: str, package: str) -> ModuleType:
    """Import a module of the ``eval`` extra, or say how to install it.

    Args:
        module: The module, e.g. ``"sklearn.cluster"``.
        package: Its distribution, e.g. ``"scikit-learn"``.

    Returns:
        The module.

    Raises:
        ModuleNotFoundError: Naming the ``pip install`` line.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f'The evaluation harness needs {package}: pip install "kvemb-rag[eval]" (or pip install {package}).'
        ) from exc


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score descending, ties by id descending (trec_eval / pytrec_eval order)."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def _judged(qrels: Qrels, run: Run) -> list[str]:
    return [qid for qid in qrels if qid in run]


def ndcg_at_k(qrels: Qrels, run: Run, k: int = 10) -> dict[str, float]:
    """Per-query nDCG@k as trec_eval's ``ndcg_cut.k``: gain = grade, discount ``log2(rank + 1)``.

    Returns:
        Query id -> nDCG@k for every judged query present in the run.
    """
    out: dict[str, float] = {}
    for qid in _judged(qrels, run):
        judged = qrels[qid]
        ranked = rank_documents(run[qid])[:k]
        dcg = sum(max(judged.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked))
        ideal_gains = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal_gains))
        out[qid] = dcg / idcg if idcg > 0 else 0.0
    return out


def recall_at_k(qrels: Qrels, run: Run, k: int = 100) -> dict[str, float]:
    """Per-query Recall@k as trec_eval's ``recall.k`` (relevant = grade >= 1).

    Returns:
        Query id -> recall for every judged query present in the run (0 when it has no relevant document).
    """
    out: dict[str, float] = {}
    for qid in _judged(qrels, run):
        relevant = {doc for doc, grade in qrels[qid].items() if grade >= 1}
        hits = sum(1 for doc in rank_documents(run[qid])[:k] if doc in relevant)
        out[qid] = hits / len(relevant) if relevant else 0.0
    return out


def mrr_at_k(qrels: Qrels, run: Run, k: int = 10) -> dict[str, float]:
    """Per-query reciprocal rank of the first relevant (grade > 0) document in the top k (BEIR / MTEB).

    Returns:
        Query id -> reciprocal rank (0 when none of the top k is relevant).
    """
    out: dict[str, float] = {}
    for qid in _judged(qrels, run):
        relevant = {doc for doc, grade in qrels[qid].items() if grade > 0}
        ranked = rank_documents(run[qid])[:k]
        out[qid] = next((1.0 / (rank + 1) for rank, doc in enumerate(ranked) if doc in relevant), 0.0)
    return out


def _mean(values: Mapping[str, float]) -> float:
    if not values:
        raise InputError("no judged query appears in the run; nothing to average.")
    return float(sum(values.values()) / len(values))


def retrieval_scores(qrels: Qrels, run: Run) -> dict[str, float]:
    """The harness's retrieval metrics, averaged over judged queries present in the run.

    Args:
        qrels: Query id -> {document id: grade}.
        run: Query id -> {document id: score} (top 100 or more per query).

    Returns:
        ``{"ndcg@10": ..., "recall@100": ..., "mrr@10": ...}``.

    Raises:
        ValueError: No judged query appears in the run.
    """
    return {
        "ndcg@10": _mean(ndcg_at_k(qrels, run, 10)),
        "recall@100": _mean(recall_at_k(qrels, run, 100)),
        "mrr@10": _mean(mrr_at_k(qrels, run, 10)),
    }


def exact_search(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    *,
    top_k: int = 100,
    ignore_identical_ids: bool = False,
    block_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Exact top-k cosine search (rows must be unit vectors) by blocked matrix products.

    Args:
        query_vectors: ``(Q, D)`` unit rows.
        doc_vectors: ``(N, D)`` unit rows.
        query_ids: ``Q`` ids.
        doc_ids: ``N`` ids.
        top_k: Documents kept per query.
        ignore_identical_ids: Drop a document whose id equals the query id, as BEIR's exact search and
            ``EvaluateRetrieval`` do by default (right for corpora that contain the queries, e.g. ArguAna,
            Quora; wrong where query and document ids are separate numberings, e.g. Cranfield). One extra
            candidate is fetched so ``top_k`` documents remain.
        block_size: Queries per matrix product (bounds memory at ``block_size * N`` floats).

    Returns:
        Query id -> {document id: cosine score}.

    Raises:
        ValueError: Shapes and id counts disagree.
    """
    if query_vectors.ndim != 2 or doc_vectors.ndim != 2 or query_vectors.shape[1] != doc_vectors.shape[1]:
        raise ValueError(f"expected (Q, D) and (N, D) arrays, got {query_vectors.shape} and {doc_vectors.shape}.")
    if len(query_ids) != query_vectors.shape[0] or len(doc_ids) != doc_vectors.shape[0]:
        raise ValueError("query_ids / doc_ids must match the number of vector rows.")
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be >= 1.")
    docs = np.ascontiguousarray(doc_vectors, dtype=np.float32)  # (N, D)
    fetch = min(top_k + (1 if ignore_identical_ids else 0), docs.shape[0])
    results: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), block_size):
        block = np.asarray(query_vectors[start : start + block_size], dtype=np.float32)  # (B, D)
        scores = block @ docs.T  # (B, N)
        if fetch < docs.shape[0]:
            top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]  # (B, fetch), unordered
        else:
            top = np.broadcast_to(np.arange(docs.shape[0]), (block.shape[0], docs.shape[0]))
        for row, qid in enumerate(query_ids[start : start + block_size]):
            hits = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
            if ignore_identical_ids:
                hits.pop(qid, None)
            results[qid] = dict(sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)[:top_k])
    return results


def cosine_spearman(vectors1: np.ndarray, vectors2: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman correlation between pairwise cosine similarities and gold scores (MTEB ``cosine_spearman``).

    Args:
        vectors1: ``(n, D)`` embeddings of the first sentences.
        vectors2: ``(n, D)`` embeddings of the second sentences.
        gold: ``n`` gold scores.

    Returns:
        Spearman's rho.
    """
    spearmanr = optional_import("scipy.stats", "scipy").spearmanr

    a = np.asarray(vectors1, dtype=np.float64)  # (n, D)
    b = np.asarray(vectors2, dtype=np.float64)  # (n, D)
    if a.shape != b.shape or a.shape[0] != len(gold):
        raise ValueError(f"shape mismatch: {a.shape}, {b.shape}, {len(gold)} gold scores.")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)  # (n,)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)  # (n,)
    return float(spearmanr(cosine, np.asarray(gold, dtype=np.float64)).statistic)


@dataclass(frozen=True)
class ClassificationProtocol:
    """How :func:`logistic_regression_accuracy` trains and scores (defaults: MTEB 2.x's protocol).

    Attributes:
        n_experiments: Repetitions, each on a different training subsample; accuracies are averaged.
        samples_per_label: Training texts drawn per label in each experiment (MTEB: 8); ``None`` trains once
            on the whole training split.
        seed: Seed of the subsampling and of the classifier.
        max_iter: ``LogisticRegression(max_iter=...)``.
    """

    n_experiments: int = 10
    samples_per_label: int | None = 8
    seed: int = 42
    max_iter: int = 100

    def __post_init__(self) -> None:
        if self.n_experiments < 1:
            raise ConfigError(f"n_experiments={self.n_experiments} must be >= 1.")
        if self.samples_per_label is not None and self.samples_per_label < 1:
            raise ConfigError(f"samples_per_label={self.samples_per_label} must be >= 1 or None (whole split).")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter={self.max_iter} must be >= 1.")

    def training_subsets(self, labels: Sequence[str]) -> list[list[int]]:
        """The training row indices of each experiment, drawn exactly as MTEB's ``_undersample_data``.

        One index list is shuffled in place by a fresh ``RandomState(seed)`` before each experiment (so
        experiments differ), then the first ``samples_per_label`` rows of each label are taken in that order.
        """
        if self.samples_per_label is None:
            return [list(range(len(labels)))]
        idxs = list(range(len(labels)))
        subsets: list[list[int]] = []
        for _ in range(self.n_experiments):
            np.random.RandomState(self.seed).shuffle(idxs)
            counts: dict[str, int] = defaultdict(int)
            chosen: list[int] = []
            for i in idxs:
                if counts[labels[i]] < self.samples_per_label:
                    chosen.append(i)
                    counts[labels[i]] += 1
            subsets.append(chosen)
        return subsets


def logistic_regression_accuracy(
    train_vectors: np.ndarray,
    train_labels: Sequence[str],
    test_vectors: np.ndarray,
    test_labels: Sequence[str],
    protocol: ClassificationProtocol | None = None,
    *,
    subsets: Sequence[Sequence[int]] | None = None,
) -> float:
    """Test accuracy of logistic regression on embeddings, MTEB's classification protocol.

    MTEB 2.x (``AbsTaskClassification``): ``n_experiments=10`` times, train
    ``LogisticRegression(max_iter=100, random_state=42)`` on ``samples_per_label=8`` texts per label drawn
    from the train split (see :meth:`ClassificationProtocol.training_subsets`), score accuracy on the whole
    test split, and average.

    Args:
        train_vectors: Embeddings of the training rows (all rows, or only ``subsets``' rows in the order of
            ``sorted(union(subsets))`` when ``subsets`` is given).
        train_labels: Labels of all training rows.
        test_vectors: ``(n_test, D)`` embeddings.
        test_labels: ``n_test`` labels.
        protocol: The protocol; default MTEB's.
        subsets: Pre-computed :meth:`ClassificationProtocol.training_subsets` (lets the caller embed only the
            union of the rows used).

    Returns:
        Mean accuracy over experiments.
    """
    linear_model = optional_import("sklearn.linear_model", "scikit-learn")

    protocol = protocol or ClassificationProtocol()
    chosen = [list(s) for s in subsets] if subsets is not None else protocol.training_subsets(train_labels)
    union = sorted(set().union(*chosen))
    if train_vectors.shape[0] == len(train_labels):
        position = {i: i for i in union}
    elif train_vectors.shape[0] == len(union):
        position = {orig: pos for pos, orig in enumerate(union)}
    else:
        raise ValueError(
            f"train_vectors has {train_vectors.shape[0]} rows; expected {len(train_labels)} (all rows) or "
            f"{len(union)} (the union of the training subsets)."
        )
    y_test = np.asarray(test_labels)
    accuracies: list[float] = []
    for rows in chosen:
        classifier = linear_model.LogisticRegression(max_iter=protocol.max_iter, random_state=protocol.seed)
        classifier.fit(train_vectors[[position[i] for i in rows]], [train_labels[i] for i in rows])
        accuracies.append(float(np.mean(classifier.predict(test_vectors) == y_test)))
    return float(np.mean(accuracies))


def kmeans_v_measure(vectors: np.ndarray, labels: Sequence[str], *, seed: int = 42) -> float:
    """V-measure of ``KMeans(n_clusters=number of labels, n_init="auto", random_state=seed)``.

    Note MTEB's clustering tasks differ (mini-batch k-means over 10 bootstrap samples), so this number is
    not an MTEB clustering score.

    Args:
        vectors: ``(n, D)`` embeddings (unit rows).
        labels: ``n`` gold labels.
        seed: k-means seed.

    Returns:
        The V-measure in [0, 1].
    """
    cluster = optional_import("sklearn.cluster", "scikit-learn")
    v_measure_score = optional_import("sklearn.metrics", "scikit-learn").v_measure_score

    n_clusters = len(set(labels))
    if n_clusters < 2:
        raise InputError(f"clustering needs at least 2 labels, got {n_clusters}.")
    model = cluster.KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed)
    predicted = model.fit_predict(np.asarray(vectors, dtype=np.float32))
    return float(v_measure_score(list(labels), predicted))
