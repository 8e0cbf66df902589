"""The store's errors, and the embedder identity rules they enforce."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvemb_rag.errors import KVEmbError

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder

__all__ = [
    "CollectionNotFoundError",
    "EmbedderMismatchError",
    "IncompatibleCollectionError",
    "KVStoreError",
    "embedder_from_identity",
    "identity_differences",
]


class KVStoreError(KVEmbError):
    """Base class of the store's user-facing errors."""


class CollectionNotFoundError(KVStoreError, LookupError):
    """The collection does not exist (nothing was indexed into it yet)."""


class IncompatibleCollectionError(KVStoreError, ValueError):
    """The collection was not made by kvemb-rag (no embedder identity) or does not use the cosine space."""


class EmbedderMismatchError(KVStoreError, ValueError):
    """The embedder differs from the one that built the collection, so its vectors are not comparable.

    Attributes:
        stored: The identity recorded in the collection.
        current: The identity of the embedder that was given.
        differences: ``{key: (stored value, current value)}`` for every differing key.
    """

    def __init__(self, collection: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        self.collection = collection
        self.stored = dict(stored)
        self.current = dict(current)
        self.differences = identity_differences(stored, current)
        lines = "\n".join(
            f"  {key}: collection has {old!r}, embedder has {new!r}"
            for key, (old, new) in self.differences.items()
        )
        super().__init__(
            f"Collection {collection!r} was built with a different embedder; its vectors are not comparable "
            f"with this one's:\n{lines}\nUse the same settings as the collection (e.g. "
            f"KVStore(...).load_embedder() or `kvemb index` without overriding them), or index into a new "
            "collection."
        )


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys on which two embedder identities differ.

    ``model`` (a name or a path as typed) is ignored when both sides carry the same ``weights`` fingerprint:
    the same weights reached through another path give comparable vectors.

    Args:
        stored: One identity (e.g. the collection's).
        current: The other (e.g. :attr:`KVEmbedder.identity`).

    Returns:
        ``{key: (stored value, current value)}``, empty when the identities are equivalent.
    """
    skip = (
        {"model"}
        if stored.get("weights") is not None and stored.get("weights") == current.get("weights")
        else set()
    )
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(stored) | set(current)):
        if key in skip:
            continue
        old, new = stored.get(key), current.get(key)
        if _canonical(old) != _canonical(new):
            diffs[key] = (old, new)
    return diffs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def embedder_from_identity(identity: Mapping[str, Any], **overrides: Any) -> KVEmbedder:
    """Build the embedder a collection was indexed with, from its stored identity.

    The recorded layers are passed explicitly, so no layer selection runs.

    Args:
        identity: An embedder identity (:attr:`KVEmbedder.identity`, e.g. :attr:`KVStore.identity`).
        **overrides: Other :class:`KVEmbedder` keyword arguments (``device``, ``cache_dir``, ``model`` to load
            the same weights from another location...).

    Returns:
        The embedder; its identity equals ``identity`` unless an override changes it.

    Raises:
        ValueError: ``identity`` lacks the ``model`` entry.
    """
    from kvemb_rag.engine.embedder import KVEmbedder

    if not identity.get("model"):
        raise ValueError(f"The identity {dict(identity)!r} names no model; it cannot be rebuilt.")
    kwargs: dict[str, Any] = {
        "strategy": identity.get("strategy", "kv"),
        "max_length": identity.get("max_length"),
        "dtype": identity.get("dtype"),
        "query_template": identity.get("query_template"),
        "document_template": identity.get("document_template"),
    }
    if identity.get("pooling") not in (None, "echo"):  # echo takes no pooling setting
        kwargs["pooling"] = identity["pooling"]
    if identity.get("layers"):
        kwargs["layers"] = list(identity["layers"])
    if identity.get("bias") is not None:
        kwargs["bias"] = float(identity["bias"])
    kwargs.update(overrides)
    model = str(kwargs.pop("model", identity["model"]))
    return KVEmbedder(model, **kwargs)

