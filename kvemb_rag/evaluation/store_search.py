"""Retrieval as users get it: the corpus indexed into a :class:`~kvemb_rag.store.KVStore` and searched there.

:func:`~kvemb_rag.evaluation.tasks.evaluate_retrieval` embeds whole documents and searches them exactly: it
measures the embedding. :func:`evaluate_store_retrieval` measures the product instead: the corpus is indexed
into a temporary on-disk store with the store's own chunking, and each query is answered by
``store.query(query, k, per_document=True, mode=mode)`` (a document scores by its best chunk) in every
requested search mode (:data:`kvemb_rag.store.SEARCH_MODES`) on that one index. The metrics are the same
(nDCG@10, Recall@100, MRR@10), named per mode: ``"ndcg@10/hybrid"`` (:func:`store_metric`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from kvemb_rag.errors import ConfigError
from kvemb_rag.evaluation.data import RetrievalData
from kvemb_rag.evaluation.encoders import kv_embedder
from kvemb_rag.evaluation.metrics import retrieval_scores
from kvemb_rag.store.search import SEARCH_MODES, check_mode

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.store import IndexProgress, KVStore

__all__ = ["check_search_modes", "evaluate_store_retrieval", "store_metric"]

logger = logging.getLogger(__name__)

# The collection of the temporary store (one store per evaluated dataset).
_COLLECTION = "kvemb-eval"


def store_metric(metric: str, mode: str) -> str:
    """The record metric name of a store-search score, e.g. ``store_metric("ndcg@10", "hybrid")``."""
    return f"{metric}/{mode}"


def check_search_modes(modes: Sequence[str]) -> tuple[str, ...]:
    """The search modes, validated and without repeats (first appearance kept).

    Args:
        modes: Modes of :data:`kvemb_rag.store.SEARCH_MODES`.

    Returns:
        The modes as a tuple.

    Raises:
        ConfigError: A mode is not one of :data:`~kvemb_rag.store.SEARCH_MODES` (the message lists them).
    """
    if isinstance(modes, str):
        raise ConfigError(f"search modes must be a sequence of modes, e.g. ({modes!r},); got the string {modes!r}.")
    for mode in modes:
        if not isinstance(mode, str):
            raise ConfigError(f"Search mode {mode!r} is not valid; choose one of {', '.join(SEARCH_MODES)}.")
        check_mode(mode)
    return tuple(dict.fromkeys(modes))


def _documents(data: RetrievalData) -> list[str]:
    """Ids of the documents that can be indexed (an empty one cannot, and counts as a miss if relevant)."""
    doc_ids = [doc_id for doc_id, text in data.corpus.items() if text.strip()]
    if len(doc_ids) < len(data.corpus):
        blank = [doc_id for doc_id, text in data.corpus.items() if not text.strip()]
        logger.warning("%s: %d empty document(s) cannot be retrieved: %s", data.name, len(blank), blank[:10])
    return doc_ids


def evaluate_store_retrieval(
    embedder: KVEmbedder,
    data: RetrievalData,
    modes: Sequence[str] = SEARCH_MODES,
    *,
    chunk_size: int | None = None,
    k: int = 100,
    ignore_identical_ids: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 of the store's own search, per search mode.

    The corpus is indexed once, into a temporary on-disk Chroma store (deleted afterwards) with the store's
    chunking; then every query is searched in every mode on that store with
    ``store.query(query, k, per_document=True, mode=mode)``. Documents keep the hit order (a document's
    score is its best chunk's rank), and at most ``k`` are retrieved per query.

    Args:
        embedder: The engine that embeds the chunks and the queries.
        data: The benchmark.
        modes: Search modes (:data:`kvemb_rag.store.SEARCH_MODES`), each scored on the same index.
        chunk_size: Tokens per stored chunk, template included; default the store's
            (:data:`kvemb_rag.store.DEFAULT_CHUNK_SIZE`, or the embedder's ``max_length`` when smaller).
        k: Documents retrieved per query (at least 100 for Recall@100 to mean what it says).
        ignore_identical_ids: Drop a retrieved document whose id equals the query id (see
            :func:`~kvemb_rag.evaluation.tasks.evaluate_retrieval`).
        progress: Show progress bars for indexing and searching.

    Returns:
        ``{store_metric(metric, mode): value}`` for each mode in order and each of ``"ndcg@10"``,
        ``"recall@100"``, ``"mrr@10"``.

    Raises:
        ConfigError: ``embedder`` is not a :class:`kvemb_rag.KVEmbedder`, no mode, an unknown mode, ``k`` < 1,
            or a bad ``chunk_size`` (below the store's minimum or above the embedder's ``max_length``).

    Example:
        >>> scores = evaluate_store_retrieval(  # doctest: +SKIP
        ...     KVEmbedder("Qwen/Qwen3-0.6B"), load_beir("data/scifact"), ["dense", "hybrid"])
        >>> scores["ndcg@10/hybrid"]  # doctest: +SKIP
    """
    from kvemb_rag.store import Document, KVStore  # chromadb is imported when the store opens

    embedder = kv_embedder(embedder)
    modes = check_search_modes(modes)
    if not modes:
        raise ConfigError(f"no search mode given; choose from {', '.join(SEARCH_MODES)}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an int >= 1; got {k!r}.")
    doc_ids = _documents(data)
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kvemb-eval-") as folder:
        store = KVStore(Path(folder) / "db", collection=_COLLECTION, embedder=embedder, chunk_size=chunk_size)
        try:
            bar = tqdm(total=len(doc_ids), desc=f"Indexing {data.name}", unit="doc", disable=not progress)
            try:

                def advance(event: IndexProgress) -> None:
                    bar.update(event.documents_done - bar.n)

                store.add_documents([Document(doc_id, data.corpus[doc_id]) for doc_id in doc_ids], progress=advance)
            finally:
                bar.close()
            for mode in modes:
                run = _search(store, data, mode, k, ignore_identical_ids, progress)
                for metric, value in retrieval_scores(data.qrels, run).items():
                    scores[store_metric(metric, mode)] = value
        finally:
            store.close()
    return scores


def _search(
    store: KVStore, data: RetrievalData, mode: str, k: int, ignore_identical_ids: bool, progress: bool
) -> dict[str, Mapping[str, float]]:
    """Query id -> {document id: score} of one mode; scores decrease with the hit rank (order kept)."""
    wanted = k + 1 if ignore_identical_ids else k  # the query's own id may take one place
    run: dict[str, Mapping[str, float]] = {}
    queries = tqdm(data.queries.items(), desc=f"Searching {data.name} ({mode})", unit="query", disable=not progress)
    for qid, text in queries:
        if not text.strip():  # nothing to search for: the query retrieves nothing and scores 0
            run[qid] = {}
            continue
        hits = store.query(text, wanted, per_document=True, mode=mode)
        ranked = [hit.doc_id for hit in hits if not (ignore_identical_ids and hit.doc_id == qid)][:k]
        # Rank-based scores: the store's own scores may tie, and ties would be re-broken by document id.
        run[qid] = {doc_id: float(len(ranked) - rank) for rank, doc_id in enumerate(ranked)}
    return run
