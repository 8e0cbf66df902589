"""``kvemb serve``: an OpenAI-compatible embedding server for KV-Embedding (FastAPI + uvicorn).

``POST /v1/embeddings`` answers like OpenAI's embeddings API (``input`` a string or a list of strings,
``encoding_format`` ``"float"`` or ``"base64"``, ``data[i].embedding``, ``usage``), so the official ``openai``
client, Chroma's ``OpenAIEmbeddingFunction`` and the LangChain / LlamaIndex OpenAI classes work against it; the
extension field ``input_type`` (``"document"``, the default, or ``"query"``) picks the template. Concurrent
requests are coalesced into engine calls of at most ``max_batch_tokens`` tokens
(:class:`~kvemb_rag.serve.batcher.MicroBatcher`); at most ``max_concurrent_requests`` are admitted at once (one
more gets 429 with ``Retry-After``); ``GET /metrics`` exposes Prometheus metrics
(:class:`~kvemb_rag.serve.metrics.ServerMetrics`).

Needs the ``serve`` extra: ``pip install "kvemb-rag[serve]"``.

Example:
    >>> from kvemb_rag import KVEmbedder
    >>> from kvemb_rag.serve import ServeLimits, run_server
    >>> run_server(KVEmbedder(), port=8000, limits=ServeLimits(max_wait_ms=2))  # doctest: +SKIP
"""

from __future__ import annotations

from kvemb_rag.serve.app import create_app, run_server
from kvemb_rag.serve.batcher import BatcherStats, MicroBatcher
from kvemb_rag.serve.config import ServeLimits
from kvemb_rag.serve.metrics import ServerMetrics
from kvemb_rag.serve.schema import APIError, EmbeddingRequest

__all__ = [
    "APIError",
    "BatcherStats",
    "EmbeddingRequest",
    "MicroBatcher",
    "ServeLimits",
    "ServerMetrics",
    "create_app",
    "run_server",
]
