"""One function per task type: embed a dataset with an :class:`~.encoders.Encoder`, then score it.

Symmetric tasks (STS, classification, clustering) embed with the document side (docs/method.md, "The prompt");
retrieval embeds queries with the query side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvemb_rag.evaluation.data import ClassificationData, LabelledTexts, RetrievalData, STSData
from kvemb_rag.evaluation.encoders import Encoder, context_size
from kvemb_rag.evaluation.metrics import (
    ClassificationProtocol,
    cosine_spearman,
    exact_search,
    kmeans_v_measure,
    logistic_regression_accuracy,
    retrieval_scores,
)

__all__ = [
    "DEFAULT_MAX_LENGTHS",
    "LONG_DOC_MODES",
    "evaluate_classification",
    "evaluate_clustering",
    "evaluate_long_documents",
    "evaluate_retrieval",
    "evaluate_sts",
    "long_doc_metric",
]

logger = logging.getLogger(__name__)

#: Document token limits of the long-document sweep (LoCoV1 in the paper goes up to 4,096).
DEFAULT_MAX_LENGTHS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
#: How over-long documents are embedded in the sweep (``encode(overflow=...)``).
LONG_DOC_MODES: tuple[str, ...] = ("chunk", "truncate")


def _rows(vectors: np.ndarray, count: int, what: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != count:
        raise ValueError(f"the encoder returned shape {array.shape} for {count} {what}; expected ({count}, dim).")
    return array


def evaluate_sts(encoder: Encoder, data: STSData, **encode_kwargs: Any) -> dict[str, float]:
    """Spearman correlation of cosine similarity with the gold scores.

    Args:
        encoder: The encoder (document side for both sentences).
        data: The sentence pairs.
        **encode_kwargs: Passed to ``encode_document`` (``batch_size``, ``show_progress_bar``...).

    Returns:
        ``{"spearman": rho}``.
    """
    unique = sorted(set(data.sentences1) | set(data.sentences2))
    vectors = _rows(encoder.encode_document(unique, **encode_kwargs), len(unique), "sentences")
    index = {text: i for i, text in enumerate(unique)}
    a = vectors[[index[s] for s in data.sentences1]]  # (n, D)
    b = vectors[[index[s] for s in data.sentences2]]  # (n, D)
    return {"spearman": cosine_spearman(a, b, data.scores)}


def _query_vectors(encoder: Encoder, data: RetrievalData, encode_kwargs: dict[str, Any]) -> np.ndarray:
    texts = [data.queries[q] for q in data.queries]
    return _rows(encoder.encode_query(texts, **encode_kwargs), len(texts), "queries")


def evaluate_retrieval(
    encoder: Encoder,
    data: RetrievalData,
    *,
    top_k: int = 100,
    ignore_identical_ids: bool = False,
    **encode_kwargs: Any,
) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 of exact cosine search over the whole corpus.

    Args:
        encoder: The encoder (query side for queries, document side for the corpus).
        data: The benchmark.
        top_k: Documents retrieved per query (at least 100 for Recall@100).
        ignore_identical_ids: Drop a retrieved document whose id equals the query id (BEIR's default;
            MTEB 2.x enables it only for tasks whose queries come from the corpus, e.g. ArguAna, Quora).
            Off by default: Cranfield's query and document ids are separate numberings (query 225's
            relevant document is document 225); SciFact's do not overlap, so it makes no difference there.
        **encode_kwargs: Passed to the encoder (``batch_size``, ``show_progress_bar``...).

    Returns:
        ``{"ndcg@10": ..., "recall@100": ..., "mrr@10": ...}``.
    """
    doc_ids = [doc_id for doc_id, text in data.corpus.items() if text.strip()]
    empty = len(data.corpus) - len(doc_ids)
    if empty:
        # An empty document has nothing to embed; it stays in the qrels, so if relevant it counts as a miss.
        blank = [doc_id for doc_id, text in data.corpus.items() if not text.strip()]
        logger.warning("%s: %d empty document(s) cannot be retrieved: %s", data.name, empty, blank[:10])
    texts = [data.corpus[doc_id] for doc_id in doc_ids]
    doc_vectors = _rows(encoder.encode_document(texts, **encode_kwargs), len(texts), "documents")
    query_vectors = _query_vectors(encoder, data, encode_kwargs)
    run = exact_search(
        query_vectors,
        doc_vectors,
        list(data.queries),
        doc_ids,
        top_k=top_k,
        ignore_identical_ids=ignore_identical_ids,
    )
    return retrieval_scores(data.qrels, run)


def evaluate_classification(
    encoder: Encoder,
    data: ClassificationData,
    protocol: ClassificationProtocol | None = None,
    **encode_kwargs: Any,
) -> dict[str, float]:
    """Logistic-regression accuracy on the test split (MTEB's protocol by default).

    Only the training rows that some experiment uses are embedded.

    Args:
        encoder: The encoder (document side).
        data: Train and test splits.
        protocol: Subsampling / classifier settings; default :class:`ClassificationProtocol` (MTEB's).
        **encode_kwargs: Passed to ``encode_document``.

    Returns:
        ``{"accuracy": ...}``.
    """
    protocol = protocol or ClassificationProtocol()
    subsets = protocol.training_subsets(data.train.labels)
    union = sorted(set().union(*subsets))
    train_texts = [data.train.texts[i] for i in union]
    train_vectors = _rows(encoder.encode_document(train_texts, **encode_kwargs), len(union), "training texts")
    test_vectors = _rows(encoder.encode_document(list(data.test.texts), **encode_kwargs), len(data.test), "test texts")
    accuracy = logistic_regression_accuracy(
        train_vectors, data.train.labels, test_vectors, data.test.labels, protocol, subsets=subsets
    )
    return {"accuracy": accuracy}


def evaluate_clustering(
    encoder: Encoder, data: LabelledTexts, *, seed: int = 42, **encode_kwargs: Any
) -> dict[str, float]:
    """V-measure of k-means (one cluster per label) over the embeddings.

    Args:
        encoder: The encoder (document side).
        data: Texts and gold labels.
        seed: k-means seed.
        **encode_kwargs: Passed to ``encode_document``.

    Returns:
        ``{"v_measure": ...}``.
    """
    vectors = _rows(encoder.encode_document(list(data.texts), **encode_kwargs), len(data), "texts")
    return {"v_measure": kmeans_v_measure(vectors, data.labels, seed=seed)}


def long_doc_metric(mode: str, max_length: int) -> str:
    """The record metric name of one point of the long-document sweep, e.g. ``"ndcg@10/chunk/512"``."""
    return f"ndcg@10/{mode}/{max_length}"


def evaluate_long_documents(
    encoder: Encoder,
    data: RetrievalData,
    max_lengths: Sequence[int] = DEFAULT_MAX_LENGTHS,
    *,
    modes: Sequence[str] = LONG_DOC_MODES,
    **encode_kwargs: Any,
) -> dict[str, float]:
    """nDCG@10 of long-document retrieval per document token limit and overflow mode.

    For each limit N, the encoder is re-configured with ``encoder.with_options(max_length=N)`` (sharing the
    loaded model) and documents are embedded with ``overflow="chunk"`` (token-weighted mean of chunk
    vectors) and ``overflow="truncate"`` (first N tokens only). Limits above the model's context
    (``max_position_embeddings``) are skipped with a warning.

    Args:
        encoder: An encoder with ``with_options(max_length=...)`` whose ``encode_*`` accept ``overflow``
            (:class:`kvemb_rag.KVEmbedder`, :class:`~.encoders.SentenceTransformerEncoder`).
        data: The benchmark (e.g. :func:`~kvemb_rag.evaluation.data.load_qmsum`).
        max_lengths: Token limits, prompt template included.
        modes: Overflow modes to compare.
        **encode_kwargs: Passed to the encoder.

    Returns:
        ``{long_doc_metric(mode, N): nDCG@10}`` for every evaluated point.

    Raises:
        TypeError: The encoder has no ``with_options``.
    """
    with_options = getattr(encoder, "with_options", None)
    if with_options is None:
        raise TypeError(f"{type(encoder).__name__} has no with_options(max_length=...); cannot sweep lengths.")
    limit = context_size(encoder)
    texts = list(data.corpus.values())
    scores: dict[str, float] = {}
    for max_length in max_lengths:
        if limit is not None and max_length > limit:
            logger.warning(
                "%s: skipping max_length=%d on %s, above the model's context of %d tokens.",
                data.name,
                max_length,
                getattr(encoder, "name", type(encoder).__name__),
                limit,
            )
            continue
        sized: Encoder = with_options(max_length=max_length)
        query_vectors = _query_vectors(sized, data, encode_kwargs)
        for mode in modes:
            doc_vectors = _rows(sized.encode_document(texts, overflow=mode, **encode_kwargs), len(texts), "documents")
            run = exact_search(query_vectors, doc_vectors, list(data.queries), list(data.corpus), top_k=100)
            scores[long_doc_metric(mode, max_length)] = retrieval_scores(data.qrels, run)["ndcg@10"]
    return scores
