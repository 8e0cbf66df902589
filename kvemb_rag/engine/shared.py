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

import inspect
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from kvemb_rag.engine.embedder import KVEmbedder

__all__ = ["clear_shared_embedders", "shared_embedder"]

_EMBEDDERS: dict[tuple[Hashable, ...], KVEmbedder] = {}
_LOCK = threading.Lock()
# KVEmbedder's keyword defaults: a setting given at its default value is the same request as leaving it out.
_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(KVEmbedder.__init__).parameters.items()
    if param.default is not inspect.Parameter.empty
}


def _freeze(value: Any) -> Hashable:
    """A hashable, order-preserving form of a settings value (lists become tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Hashable):
        return value
    raise TypeError(f"Engine setting {value!r} ({type(value).__name__}) is not hashable; pass plain values.")


def _is_default(name: str, value: Any) -> bool:
    if value is None:
        return True
    if name not in _DEFAULTS:
        return False
    default = _DEFAULTS[name]
    return type(value) is type(default) and bool(value == default)


def shared_embedder(model: str, **settings: Any) -> KVEmbedder:
    """The process-wide :class:`~kvemb_rag.KVEmbedder` for ``model`` and ``settings``, built on first request.

    Args:
        model: Hub name or local directory of a decoder-only model (a directory is keyed by its resolved
            path, so ``"./m"`` and ``"/abs/m"`` share the engine built by whichever came first).
        **settings: :class:`~kvemb_rag.KVEmbedder` keyword arguments (``strategy``, ``layers``, ``device``,
            ``dtype``, ``max_length``, templates...). Equal settings give the same engine; settings equal to
            the engine's defaults (``None`` included) are dropped first, so ``bias=1.0`` and no ``bias`` are
            the same request.

    Returns:
        The shared engine. Treat it as read-only: other adapters in the process use it too.

    Raises:
        TypeError: A setting that is not hashable once lists are turned into tuples.
        ValueError: Invalid settings (raised by :class:`~kvemb_rag.KVEmbedder`).
    """
    given = {k: v for k, v in settings.items() if not _is_default(k, v)}
    local = Path(model).expanduser()
    key = (str(local.resolve()) if local.is_dir() else str(model), _freeze(given))
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
