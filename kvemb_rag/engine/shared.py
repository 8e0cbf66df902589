"""One engine per settings per process, shared by the framework adapters and the Chroma embedding function.

:mod:`kvemb_rag.engine.loader` already shares the *model* between every :class:`~kvemb_rag.KVEmbedder` built with the
same weights, device and dtype. This module goes one step further for the integrations (LangChain,
LlamaIndex, Chroma): adapters configured with the same engine settings get the *same* engine object, so
the layer selection, the start-up check and the tokenizer are set up once. It matters for Chroma, which
rebuilds a collection's embedding function from its stored configuration on every ``add`` and ``query``.

Example:
    >>> from kvemb_rag.engine.shared import shared_embedder
    >>> a = shared_embedder("Qwen/Qwen3-0.6B", strategy="kv")  # doctest: +SKIP
    >>> b = shared_embedder("Qwen/Qwen3-0.6B", strategy="kv")  # doctest: +SKIP
    >>> a is b  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from kvemb_rag.engine.config import EmbedderConfig, validate_settings
from kvemb_rag.engine.embedder import KVEmbedder

__all__ = ["clear_shared_embedders", "shared_embedder"]

_EMBEDDERS: dict[EmbedderConfig, KVEmbedder] = {}
_LOCK = threading.Lock()


def shared_embedder(model: str, **settings: Any) -> KVEmbedder:
    """The process-wide :class:`~kvemb_rag.KVEmbedder` for ``model`` and ``settings``, built on first request.

    Args:
        model: Hub name or local directory of a decoder-only model (a directory is keyed by its resolved
            path, so ``"./m"`` and ``"/abs/m"`` share the engine built by whichever came first).
        **settings: :class:`~kvemb_rag.KVEmbedder` settings (``strategy``, ``layers``, ``device``, ``dtype``,
            ``max_length``, templates...). Requests whose validated settings are equal once the defaults that
            need no model are spelled out share one engine: ``bias=1.0`` and no ``bias`` are the same request,
            and so are no template and the strategy's own template.

    Returns:
        The shared engine. Treat it as read-only: other adapters in the process use it too.

    Raises:
        ConfigError: Invalid or unknown settings (checked before anything loads).
    """
    local = Path(model).expanduser()
    where = str(local.resolve()) if local.is_dir() else str(model)
    given = {name: value for name, value in settings.items() if value is not None}  # None: the default
    key = dataclasses.replace(validate_settings(model, **given).explicit(), model=where)
    with _LOCK:
        # Held while building: a second thread asking for the same engine waits instead of loading it twice.
        engine = _EMBEDDERS.get(key)
        if engine is None:
            engine = KVEmbedder(model, **given)
            _EMBEDDERS[key] = engine
        return engine


def clear_shared_embedders() -> None:
    """Forget every shared engine (pair with :func:`kvemb_rag.clear_model_cache` to also drop the models)."""
    with _LOCK:
        _EMBEDDERS.clear()
