"""kvemb-rag: training-free text embeddings from decoder-only LLMs (KV-Embedding) for RAG."""

from __future__ import annotations

import logging

from kvemb_rag.calibration import default_calibration_texts
from kvemb_rag.chunking import Chunk, chunk_text
from kvemb_rag.config import STRATEGIES, EmbedderConfig, LayerSelectionConfig
from kvemb_rag.embedder import KVEmbedder
from kvemb_rag.layers import LayerSelection, select_window, twonn_dimension
from kvemb_rag.loader import VERIFIED_MODEL_TYPES, clear_model_cache

__all__ = [
    "STRATEGIES",
    "VERIFIED_MODEL_TYPES",
    "Chunk",
    "EmbedderConfig",
    "KVEmbedder",
    "LayerSelection",
    "LayerSelectionConfig",
    "chunk_text",
    "clear_model_cache",
    "default_calibration_texts",
    "select_window",
    "twonn_dimension",
]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
