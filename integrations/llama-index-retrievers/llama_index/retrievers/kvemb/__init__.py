"""LlamaIndex integration of kvemb-rag: :class:`KVRetriever`, hybrid, dense or lexical search over a KVStore."""

from __future__ import annotations

from llama_index.retrievers.kvemb.base import DEFAULT_SIMILARITY_TOP_K, KVRetriever

__all__ = ["DEFAULT_SIMILARITY_TOP_K", "KVRetriever"]
