"""LlamaIndex integration of kvemb-rag: :class:`KVEmbedding`, training-free embeddings from a local LLM."""

from __future__ import annotations

from llama_index.embeddings.kvemb.base import DEFAULT_MODEL, KVEmbedding

__all__ = ["DEFAULT_MODEL", "KVEmbedding"]
