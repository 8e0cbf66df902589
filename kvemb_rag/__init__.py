"""kvemb-rag: training-free text embeddings from decoder-only LLMs (KV-Embedding) for RAG.

The public names below are imported on first use (PEP 562), so ``import kvemb_rag`` and the ``kvemb``
command line start without loading torch or transformers until an engine is needed, nor chromadb until a
store opens. They are the engine (:class:`KVEmbedder` and its settings), the store (:class:`KVStore`,
:class:`Document`, :class:`Hit`) and the error types (all derived from :class:`KVEmbError`).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvemb_rag.engine.calibration import default_calibration_texts
    from kvemb_rag.engine.chunking import Chunk, chunk_text
    from kvemb_rag.engine.config import STRATEGIES, EmbedderConfig, LayerSelectionConfig
    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.engine.layers import LayerSelection, select_window, twonn_dimension
    from kvemb_rag.engine.loader import VERIFIED_MODEL_TYPES, clear_model_cache
    from kvemb_rag.errors import (
        ConfigError,
        DataNotFoundError,
        InputError,
        KVEmbError,
        ModelLoadError,
        ModelNotFoundError,
        UnsupportedModelError,
    )
    from kvemb_rag.store.documents import Document
    from kvemb_rag.store.errors import (
        CollectionNotFoundError,
        EmbedderMismatchError,
        IncompatibleCollectionError,
        KVStoreError,
    )
    from kvemb_rag.store.records import Hit
    from kvemb_rag.store.store import KVStore

__all__ = [
    "STRATEGIES",
    "VERIFIED_MODEL_TYPES",
    "Chunk",
    "CollectionNotFoundError",
    "ConfigError",
    "DataNotFoundError",
    "Document",
    "EmbedderConfig",
    "EmbedderMismatchError",
    "Hit",
    "IncompatibleCollectionError",
    "InputError",
    "KVEmbError",
    "KVEmbedder",
    "KVStore",
    "KVStoreError",
    "LayerSelection",
    "LayerSelectionConfig",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "chunk_text",
    "clear_model_cache",
    "default_calibration_texts",
    "select_window",
    "twonn_dimension",
]
__version__ = "0.1.0"

# Where each public name lives.
_HOMES = {
    "default_calibration_texts": "kvemb_rag.engine.calibration",
    "Chunk": "kvemb_rag.engine.chunking",
    "chunk_text": "kvemb_rag.engine.chunking",
    "STRATEGIES": "kvemb_rag.engine.config",
    "EmbedderConfig": "kvemb_rag.engine.config",
    "LayerSelectionConfig": "kvemb_rag.engine.config",
    "KVEmbedder": "kvemb_rag.engine.embedder",
    "ConfigError": "kvemb_rag.errors",
    "DataNotFoundError": "kvemb_rag.errors",
    "InputError": "kvemb_rag.errors",
    "KVEmbError": "kvemb_rag.errors",
    "ModelLoadError": "kvemb_rag.errors",
    "ModelNotFoundError": "kvemb_rag.errors",
    "UnsupportedModelError": "kvemb_rag.errors",
    "LayerSelection": "kvemb_rag.engine.layers",
    "select_window": "kvemb_rag.engine.layers",
    "twonn_dimension": "kvemb_rag.engine.layers",
    "VERIFIED_MODEL_TYPES": "kvemb_rag.engine.loader",
    "clear_model_cache": "kvemb_rag.engine.loader",
    "Document": "kvemb_rag.store.documents",
    "CollectionNotFoundError": "kvemb_rag.store.errors",
    "EmbedderMismatchError": "kvemb_rag.store.errors",
    "IncompatibleCollectionError": "kvemb_rag.store.errors",
    "KVStoreError": "kvemb_rag.store.errors",
    "Hit": "kvemb_rag.store.records",
    "KVStore": "kvemb_rag.store.store",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kvemb_rag' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
