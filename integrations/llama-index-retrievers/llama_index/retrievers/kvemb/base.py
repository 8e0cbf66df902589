"""LlamaIndex ``BaseRetriever`` over a kvemb-rag :class:`~kvemb_rag.store.KVStore` (hybrid, dense or lexical)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode

from kvemb_rag.errors import ConfigError
from kvemb_rag.store import Fusion, Hit, KVStore
from kvemb_rag.store.search import check_mode

__all__ = ["DEFAULT_SIMILARITY_TOP_K", "KVRetriever"]

#: Results per query when none is given.
DEFAULT_SIMILARITY_TOP_K = 4
# Node metadata that locates the chunk (for code, citations and debugging): kept out of the text that
# LlamaIndex builds for an LLM prompt or for re-embedding a node.
_POSITION_KEYS = ["chunk_index", "start", "end", "mode"]


class KVRetriever(BaseRetriever):
    """Search a :class:`~kvemb_rag.store.KVStore` from LlamaIndex: hybrid (default), dense or lexical.

    Each hit becomes a :class:`~llama_index.core.schema.NodeWithScore` around a
    :class:`~llama_index.core.schema.TextNode`: its ``id_`` is the store's record id, its text the chunk,
    ``start_char_idx`` / ``end_char_idx`` the chunk's span in its document, its ``ref_doc_id`` (source
    relationship) the document id, and its metadata the document's user metadata plus ``doc_id``, ``source``,
    ``chunk_index``, ``start``, ``end`` and ``mode`` (the search mode used; the last four are excluded from
    the node's LLM and embedding text). ``score`` is the hit's score (see
    :meth:`KVStore.query <kvemb_rag.store.KVStore.query>`).

    The store does the work and embeds the query itself (a ``QueryBundle``'s own embedding is not used); it
    needs an embedder for the dense and hybrid modes (give one to the store, or call
    :meth:`~kvemb_rag.store.KVStore.load_embedder` on it). ``aretrieve`` runs the search in a worker thread
    (the engine is synchronous), so it does not block the event loop.

    Args:
        store: The store to search.
        similarity_top_k: Number of results (documents with ``per_document``, chunks otherwise).
        mode: One of :data:`kvemb_rag.store.SEARCH_MODES`; ``None`` uses the store's default
            (:data:`kvemb_rag.store.DEFAULT_MODE`).
        per_document: Return the best chunk of each of the ``similarity_top_k`` best documents (distinct
            documents, what a RAG prompt usually wants) instead of the best chunks.
        where: A Chroma metadata filter on the records, e.g. ``{"lang": "en"}``.
        fusion: How hybrid search fuses its legs; ``None`` for the store's default.
        callback_manager: LlamaIndex callbacks (default: ``Settings.callback_manager``'s behaviour).
        verbose: Print LlamaIndex's verbose retrieval messages.

    Raises:
        ConfigError: (a ``ValueError``) a setting is not valid; the message names it and what is valid.

    Example:
        >>> from kvemb_rag import KVEmbedder
        >>> from kvemb_rag.store import KVStore
        >>> from llama_index.retrievers.kvemb import KVRetriever
        >>> store = KVStore("index-dir", embedder=KVEmbedder("Qwen/Qwen3-0.6B"))  # doctest: +SKIP
        >>> retriever = KVRetriever(store, similarity_top_k=3)  # doctest: +SKIP
        >>> nodes = retriever.retrieve("Which animal purrs?")  # doctest: +SKIP
        >>> nodes[0].node.metadata["doc_id"], nodes[0].node.metadata["mode"]  # doctest: +SKIP
        ('cats.md', 'hybrid')
    """

    def __init__(
        self,
        store: KVStore,
        *,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        mode: str | None = None,
        per_document: bool = True,
        where: Mapping[str, Any] | None = None,
        fusion: Fusion | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(store, KVStore):
            raise ConfigError(f"store must be a kvemb_rag.store.KVStore; got {type(store).__name__}.")
        if isinstance(similarity_top_k, bool) or not isinstance(similarity_top_k, int) or similarity_top_k < 1:
            raise ConfigError(f"similarity_top_k must be an int >= 1; got {similarity_top_k!r}.")
        if mode is not None:
            check_mode(mode)
        if not isinstance(per_document, bool):
            raise ConfigError(f"per_document must be a bool; got {per_document!r}.")
        if where is not None and not isinstance(where, Mapping):
            raise ConfigError(f"where must be a Chroma metadata filter (a mapping) or None; got {where!r}.")
        if fusion is not None and not isinstance(fusion, Fusion):
            raise ConfigError(f"fusion must be a kvemb_rag.store.Fusion or None; got {fusion!r}.")
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.store = store
        self.similarity_top_k = similarity_top_k
        self.mode = mode
        self.per_document = per_document
        self.where = dict(where) if where is not None else None
        self.fusion = fusion

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The hits of ``query_bundle.query_str`` as scored nodes, best first."""
        mode = check_mode(self.mode)  # the mode the store will use (its default for None)
        hits = self.store.query(
            query_bundle.query_str,
            self.similarity_top_k,
            per_document=self.per_document,
            where=self.where,
            mode=mode,
            fusion=self.fusion,
        )
        return [NodeWithScore(node=_to_node(hit, mode), score=hit.score) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Async :meth:`_retrieve`: the search runs in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _to_node(hit: Hit, mode: str) -> TextNode:
    """A LlamaIndex node of one hit: the chunk text, its span, the user metadata and the hit's fields."""
    metadata = {
        **hit.metadata,
        "doc_id": hit.doc_id,
        "source": hit.source,
        "chunk_index": hit.chunk_index,
        "start": hit.start,
        "end": hit.end,
        "mode": mode,
    }
    return TextNode(
        id_=hit.id,
        text=hit.text,
        metadata=metadata,
        start_char_idx=hit.start,
        end_char_idx=hit.end,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
        excluded_llm_metadata_keys=list(_POSITION_KEYS),
        excluded_embed_metadata_keys=list(_POSITION_KEYS),
    )
