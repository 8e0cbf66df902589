"""Search modes of the store: dense (KV-Embedding), lexical (BM25) and hybrid (both, fused).

Hybrid search takes the ``depth`` best chunks of each leg, scores every candidate on *both* legs exactly
(the dense score of a lexical-only candidate from its stored vector, the BM25 score of a dense-only one from
the lexical index), normalises each leg over the candidates and ranks by the weighted sum
(:func:`fuse`). Reciprocal-rank fusion is available too. The default mode and fusion were chosen on dev data
(``docs/hybrid-search.md``, ``benchmarks/hybrid_study.py``).

A query with no term in the lexical index (only stopwords, or words no record holds) is ranked by the dense
leg alone, in hybrid and in lexical mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kvemb_rag.errors import ConfigError
from kvemb_rag.store.indexing import decode_metadata
from kvemb_rag.store.records import Hit

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

    from kvemb_rag.store.lexical import LexicalIndex

__all__ = ["DEFAULT_FUSION", "DEFAULT_MODE", "FUSION_METHODS", "SEARCH_MODES", "Fusion", "fuse", "search_chunks"]

logger = logging.getLogger(__name__)

#: The search modes, default first.
SEARCH_MODES: tuple[str, ...] = ("hybrid", "dense", "lexical")
#: The mode used when none is given (``docs/hybrid-search.md``).
DEFAULT_MODE = "hybrid"
#: Fusion methods: min-max or z-score normalised weighted sum, or weighted reciprocal rank.
FUSION_METHODS: tuple[str, ...] = ("minmax", "zscore", "rrf")
# Reciprocal-rank fusion's constant (Cormack et al. 2009).
_RRF_K = 60


@dataclass(frozen=True)
class Fusion:
    """How hybrid search combines its two legs.

    Attributes:
        method: One of :data:`FUSION_METHODS`.
        weight: Weight of the dense leg in ``[0, 1]`` (the lexical leg gets ``1 - weight``).
        depth: Candidate chunks taken from each leg (at least the number of hits asked for).
    """

    method: str = "zscore"
    weight: float = 0.2
    depth: int = 100

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ConfigError(f"Fusion method {self.method!r} is not valid; choose one of {', '.join(FUSION_METHODS)}.")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise ConfigError(f"Fusion weight must be a number in [0, 1] (the dense leg's); got {self.weight!r}.")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ConfigError(f"Fusion depth must be an int >= 1 (candidates per leg); got {self.depth!r}.")


#: The fusion used when none is given (``docs/hybrid-search.md``).
DEFAULT_FUSION = Fusion()


def check_mode(mode: str | None) -> str:
    """``mode``, or :data:`DEFAULT_MODE` for ``None``; an unknown mode is a :class:`ConfigError`."""
    if mode is None:
        return DEFAULT_MODE
    if mode not in SEARCH_MODES:
        raise ConfigError(f"Search mode {mode!r} is not valid; choose one of {', '.join(SEARCH_MODES)}.")
    return mode


def _normalise(scores: np.ndarray, method: str) -> np.ndarray:
    """One leg's scores over the candidates, on a common scale (``(n,)`` -> ``(n,)``)."""
    if method == "minmax":
        span = float(scores.max() - scores.min())
        return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    std = float(scores.std())
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def fuse(
    candidates: Mapping[str, tuple[float, float]],
    dense_order: Sequence[str],
    lexical_order: Sequence[str],
    fusion: Fusion = DEFAULT_FUSION,
) -> list[tuple[str, float]]:
    """Rank candidates by their fused score, best first.

    Args:
        candidates: Record id -> (dense score, lexical score), both exact.
        dense_order: The dense leg's candidates, best first (for reciprocal-rank fusion).
        lexical_order: The lexical leg's candidates, best first (for reciprocal-rank fusion).
        fusion: How to combine the legs.

    Returns:
        ``(record id, fused score)`` pairs; ties keep the better dense score first, then the id order.
    """
    ids = list(candidates)
    if not ids:
        return []
    dense = np.array([candidates[i][0] for i in ids], dtype=np.float64)  # (n,)
    weight = float(fusion.weight)
    if fusion.method == "rrf":
        dense_rank = {record_id: rank for rank, record_id in enumerate(dense_order, start=1)}
        lexical_rank = {record_id: rank for rank, record_id in enumerate(lexical_order, start=1)}
        fused = np.array(
            [
                (weight / (_RRF_K + dense_rank[i]) if i in dense_rank else 0.0)
                + ((1 - weight) / (_RRF_K + lexical_rank[i]) if i in lexical_rank else 0.0)
                for i in ids
            ]
        )  # (n,)
    else:
        lexical = np.array([candidates[i][1] for i in ids], dtype=np.float64)  # (n,)
        fused = weight * _normalise(dense, fusion.method) + (1 - weight) * _normalise(lexical, fusion.method)
    order = sorted(range(len(ids)), key=lambda j: (-fused[j], -dense[j], ids[j]))
    return [(ids[j], float(fused[j])) for j in order]


def _hit(record_id: str, score: float, text: str | None, stored: Mapping[str, Any] | None) -> Hit:
    meta: dict[str, Any] = dict(stored or {})
    return Hit(
        score=score,
        doc_id=str(meta.get("doc_id", record_id)),
        chunk_index=int(meta.get("chunk_index", 0)),
        start=int(meta.get("start", 0)),
        end=int(meta.get("end", len(text or ""))),
        text=text or "",
        metadata=decode_metadata(meta),
        source=str(meta["source"]) if "source" in meta else None,
        id=record_id,
    )


def _dense(col: Collection, vector: np.ndarray, n: int, where: Mapping[str, Any] | None) -> list[Hit]:
    """The ``n`` nearest chunks by cosine similarity (Chroma's index)."""
    result = col.query(
        query_embeddings=[vector.tolist()],
        n_results=n,
        where=dict(where) if where else None,
        include=["documents", "metadatas", "distances"],
    )
    rows = zip(
        result["ids"][0],
        (result["documents"] or [[]])[0],
        (result["metadatas"] or [[]])[0],
        (result["distances"] or [[]])[0],
        strict=True,
    )
    return [_hit(record_id, 1.0 - float(distance), text, meta) for record_id, text, meta, distance in rows]


def _records(col: Collection, ids: Sequence[str], *, embeddings: bool) -> dict[str, tuple[Any, Any, Any]]:
    """Record id -> (text, metadata, vector or None) of the given records."""
    if not ids:
        return {}
    include: Any = ["documents", "metadatas", "embeddings"] if embeddings else ["documents", "metadatas"]
    got = col.get(ids=list(ids), include=include)
    stored: Any = got.get("embeddings")
    vectors: list[Any] = [None] * len(got["ids"]) if stored is None else list(stored)
    return {
        record_id: (text, meta, vector)
        for record_id, text, meta, vector in zip(
            got["ids"], got["documents"] or [], got["metadatas"] or [], vectors, strict=True
        )
    }


def search_chunks(
    col: Collection,
    text: str,
    n: int,
    *,
    mode: str,
    fusion: Fusion,
    where: Mapping[str, Any] | None,
    query_vector: Callable[[], np.ndarray],
    lexical_index: Callable[[], LexicalIndex],
) -> list[Hit]:
    """The ``n`` best chunks of ``col`` for ``text`` in ``mode``, best first.

    Args:
        col: The collection (non-empty).
        text: The query.
        n: Chunks wanted (at most the collection's size).
        mode: One of :data:`SEARCH_MODES`.
        fusion: The hybrid fusion.
        where: A Chroma metadata filter, applied to both legs.
        query_vector: Embeds the query (``(dim,)``, unit norm); called only when the dense leg is needed.
        lexical_index: The collection's fresh lexical index.

    Returns:
        Hits; ``score`` is the cosine similarity (dense), the BM25 score (lexical) or the fused score.
    """
    if mode == "dense":
        return _dense(col, query_vector(), n, where)
    index = lexical_index()
    scores = index.scores(text)  # (n_records,) or None
    if scores is None:
        logger.info("No term of %r is in the lexical index: ranking by the dense leg alone.", text)
        return _dense(col, query_vector(), n, where)
    allowed = None if not where else set(col.get(where=dict(where), include=[])["ids"])
    if mode == "lexical":
        top = index.top(scores, n, allowed)
        records = _records(col, [record_id for record_id, _ in top], embeddings=False)
        return [_hit(i, score, *records[i][:2]) for i, score in top if i in records]
    depth = max(fusion.depth, n)
    vector = query_vector()  # (dim,)
    dense = _nearest(col, vector, min(depth, len(index.ids) or depth), where)  # id -> cosine, best first
    lexical_top = index.top(scores, depth, allowed)
    extra = [record_id for record_id, _ in lexical_top if record_id not in dense]
    if extra:
        got = col.get(ids=extra, include=["embeddings"])
        stored = np.asarray(got["embeddings"], dtype=np.float32)  # (extra, dim)
        cosines = dict(zip(got["ids"], (stored @ vector).tolist(), strict=True))
    else:
        cosines = {}
    candidates = {i: (score, index.score_of(scores, i)) for i, score in {**dense, **cosines}.items()}
    ranked = fuse(candidates, list(dense), [i for i, _ in lexical_top], fusion)[:n]
    records = _records(col, [i for i, _ in ranked], embeddings=False)
    return [_hit(i, score, *records[i][:2]) for i, score in ranked if i in records]


def _nearest(col: Collection, vector: np.ndarray, n: int, where: Mapping[str, Any] | None) -> dict[str, float]:
    """Record id -> cosine similarity of the ``n`` nearest chunks, best first (ids and distances only)."""
    result = col.query(
        query_embeddings=[vector.tolist()], n_results=n, where=dict(where) if where else None, include=["distances"]
    )
    distances = (result["distances"] or [[]])[0]
    return {record_id: 1.0 - float(d) for record_id, d in zip(result["ids"][0], distances, strict=True)}


# Grouped search: chunks fetched per wanted document at first, and the growth factor of re-fetches.
_GROUP_FETCH_FACTOR = 4


def best_per_document(search: Callable[[int], list[Hit]], k: int, total: int) -> list[Hit]:
    """The best chunk of each of the ``k`` best documents, best first.

    ``search(n)`` ranks ``n`` chunks; more are fetched until ``k`` documents are found or ``total`` is reached.
    """
    fetch = min(total, k * _GROUP_FETCH_FACTOR)
    while True:
        hits = search(fetch)
        best: dict[tuple[str | None, str], Hit] = {}
        for hit in hits:
            best.setdefault((hit.source, hit.doc_id), hit)
        if len(best) >= k or fetch >= total or len(hits) < fetch:
            return list(best.values())[:k]
        fetch = min(total, fetch * _GROUP_FETCH_FACTOR)
