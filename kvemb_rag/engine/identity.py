"""The embedder identity: what makes two embedders' vectors comparable, derived from the settings list.

A store records the identity of the embedder that built it (:attr:`kvemb_rag.KVEmbedder.identity`) and
refuses another one whose identity differs. The identity holds the model, a fingerprint of its weights and
the *resolved* value of every setting marked ``vectors`` in :class:`~kvemb_rag.engine.config.EmbedderConfig`
(:data:`~kvemb_rag.engine.config.VECTOR_SETTINGS`): the layers actually re-routed, the templates and pooling
actually used, the token budget and dtype in effect. Two vector settings are recorded through something
else: ``revision`` through the weights fingerprint and ``selection`` through the layers it chose.

The compute dtype is recorded but does not make two identities differ
(:data:`~kvemb_rag.engine.config.PRECISION_SETTINGS`): float32 and bfloat16 vectors of the same recipe agree
to a cosine of 0.9999 and score the same on dev data (docs/method.md, "Precision"), so a collection built
on a machine with native bfloat16 stays usable on one without it. :func:`precision_differences` names
such a difference so that callers can say it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kvemb_rag.engine.centring import centring_recipe
from kvemb_rag.engine.config import PRECISION_SETTINGS, VECTOR_SETTINGS, EmbedderConfig
from kvemb_rag.errors import ConfigError

__all__ = [
    "IDENTITY_SETTINGS",
    "canonical_json",
    "identity_differences",
    "identity_of",
    "precision_differences",
    "settings_from_identity",
]

#: Vector settings the identity records through another entry.
RECORDED_THROUGH: dict[str, str] = {"revision": "weights", "selection": "layers"}
#: The settings an identity records by name (``model`` first; ``weights`` is added beside them).
IDENTITY_SETTINGS: tuple[str, ...] = tuple(name for name in VECTOR_SETTINGS if name not in RECORDED_THROUGH)


def identity_of(resolved: EmbedderConfig, weights: str) -> dict[str, Any]:
    """The JSON-serialisable identity of an engine.

    Args:
        resolved: The engine's configuration with every default resolved (explicit layers, templates,
            ``max_length`` and ``dtype``).
        weights: The fingerprint of the loaded weights.

    Returns:
        ``{"model", "weights", **IDENTITY_SETTINGS}``; ``bias`` is ``None`` when nothing is re-routed.
    """
    identity: dict[str, Any] = {"weights": weights}
    for name in IDENTITY_SETTINGS:
        identity[name] = getattr(resolved, name)
    identity["layers"] = list(resolved.layers)
    identity["bias"] = float(resolved.bias) if resolved.layers else None
    identity["pooling"] = resolved.pooling_mode
    # How the centring mean is made, or None (an identity recorded before centring has no entry: None too).
    identity["centring"] = centring_recipe() if resolved.centring_mode else None
    return identity


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys on which two embedder identities differ.

    ``model`` (a name or a path as typed) is ignored when both sides carry the same ``weights`` fingerprint:
    the same weights reached through another path give comparable vectors; so are the precision settings
    (the dtype), which change the vectors only by rounding (see :func:`precision_differences`).

    Args:
        stored: One identity (e.g. the collection's).
        current: The other (e.g. :attr:`KVEmbedder.identity`).

    Returns:
        ``{key: (stored value, current value)}``, empty when the identities are equivalent.
    """
    same_weights = stored.get("weights") is not None and stored.get("weights") == current.get("weights")
    skip = set(PRECISION_SETTINGS) | ({"model"} if same_weights else set())
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(stored) | set(current)):
        if key in skip:
            continue
        old, new = stored.get(key), current.get(key)
        if canonical_json(old) != canonical_json(new):
            diffs[key] = (old, new)
    return diffs


def precision_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The precision settings (the dtype) on which two identities differ: ``{key: (stored, current)}``."""
    return {
        key: (stored.get(key), current.get(key))
        for key in PRECISION_SETTINGS
        if stored.get(key) is not None and current.get(key) is not None and stored.get(key) != current.get(key)
    }


def canonical_json(value: Any) -> str:
    """A value as canonical JSON (sorted keys): equal identities give equal strings."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def settings_from_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~kvemb_rag.KVEmbedder` keyword settings that reproduce an identity (``model`` included).

    The recorded layers are explicit, so no layer selection runs; entries an engine resolves by itself
    (``bias`` without layers, echo's own pooling) are left out.

    Raises:
        ConfigError: ``identity`` lacks the ``model`` entry.
    """
    if not identity.get("model"):
        raise ConfigError(f"The identity {dict(identity)!r} names no model; it cannot be rebuilt.")
    settings = {name: identity[name] for name in IDENTITY_SETTINGS if identity.get(name) is not None}
    if not settings.get("layers"):
        settings.pop("layers", None)  # a strategy that does not re-route
        settings.pop("bias", None)
    if settings.get("pooling") == "echo":  # echo takes no pooling setting
        settings.pop("pooling")
    settings["centring"] = identity.get("centring") is not None  # absent: recorded before centring existed
    return settings
