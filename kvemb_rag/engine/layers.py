"""Automatic layer selection: the middle window (the default) or the intrinsic-dimension minimum (the paper).

For the paper's rule, TwoNN (Facco et al. 2017) estimates the intrinsic dimension (ID) of the last-token
states at every layer over prompted calibration texts; the re-routed window starts at the layer of minimal
ID after the first 20% of layers and spans ``floor(0.1 L)`` more layers. The result depends only on the
model, the calibration texts, the template and the rule, so it is cached on disk under that identity.

:func:`resolve_layers` turns an embedder's ``layers`` setting into the layers it re-routes; :func:`select_layers`
runs the paper's calibration (one forward pass per batch of calibration texts, through the engine's input stage
and forward pass) or reads it from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from kvemb_rag.engine.batching import length_batches
from kvemb_rag.engine.calibration import default_calibration_texts
from kvemb_rag.engine.config import EmbedderConfig, LayerSelectionConfig
from kvemb_rag.engine.inputs import check_texts
from kvemb_rag.engine.models import cache_directory  # one home for kvemb-rag's cache location
from kvemb_rag.errors import ConfigError

if TYPE_CHECKING:
    from kvemb_rag.engine.forward import ForwardPass
    from kvemb_rag.engine.inputs import InputStage

__all__ = [
    "LayerSelection",
    "cache_directory",
    "load_cached_selection",
    "middle_window",
    "resolve_layers",
    "save_cached_selection",
    "select_layers",
    "select_window",
    "selection_cache_key",
    "twonn_dimension",
]

logger = logging.getLogger(__name__)

#: Bump when the estimator or the hidden states it reads change, to invalidate old cache entries.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class LayerSelection:
    """The outcome of automatic layer selection.

    Attributes:
        layers: The selected 0-based decoder-layer indices.
        id_curve: TwoNN intrinsic dimension of the last-token states entering each decoder layer
            (index ``l`` = the input of layer ``l``, i.e. what layer ``l``'s re-routed key/value are
            projected from); ``nan`` where it is undefined (fewer than 3 distinct points).
        num_texts: Number of calibration texts used.
        from_cache: Whether this selection was read from the disk cache.
    """

    layers: tuple[int, ...]
    id_curve: tuple[float, ...]
    num_texts: int
    from_cache: bool = False


def twonn_dimension(points: np.ndarray | torch.Tensor) -> float:
    """TwoNN maximum-likelihood intrinsic dimension of a point cloud.

    For each point, ``mu = r2 / r1`` (distances to its second and first nearest neighbours);
    ``ID = N / sum(log mu)``. Duplicate points (``r1 = 0``) are collapsed first, since a zero distance makes
    ``mu`` undefined.

    Args:
        points: ``(N, D)`` array.

    Returns:
        The estimate, or ``nan`` when fewer than 3 distinct points remain.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 50))
        >>> round(twonn_dimension(x))
        5
    """
    x = torch.as_tensor(np.asarray(points), dtype=torch.float64)  # (N, D)
    if x.ndim != 2:
        raise ValueError(f"points must be 2-D (N, D), got shape {tuple(x.shape)}.")
    x = torch.unique(x, dim=0)  # (N', D) duplicates collapsed
    n = x.shape[0]
    if n < 3:
        return math.nan
    dist = torch.cdist(x, x)  # (N', N')
    dist.fill_diagonal_(math.inf)
    nearest = dist.topk(2, dim=1, largest=False).values  # (N', 2) ascending
    r1 = nearest[:, 0]  # (N',)
    r2 = nearest[:, 1]  # (N',)
    keep = r1 > 0  # near-duplicates that survived unique() at float64 precision
    log_mu = torch.log(r2[keep] / r1[keep])  # (N'',)
    total = float(log_mu.sum())
    if total <= 0:
        return math.nan
    return float(log_mu.numel()) / total


def select_window(id_curve: Sequence[float], rule: LayerSelectionConfig | None = None) -> tuple[int, ...]:
    """Apply the selection rule to a per-layer ID curve.

    Ignore the first ``floor(skip_fraction * L)`` layers, find the layer ``l*`` of minimal ID among the rest
    (``nan`` never wins), and select ``l*, l*+1, ..., l*+floor(window_fraction * L)``, capped at the last
    layer. For ``L`` = 32 or 36 that is 4 layers.

    Args:
        id_curve: ID per layer, length ``L``.
        rule: The fractions; the method's defaults when ``None``.

    Returns:
        The selected layer indices, ascending.
    """
    rule = rule or LayerSelectionConfig()
    curve = np.asarray(id_curve, dtype=np.float64)
    num_layers = curve.shape[0]
    if num_layers == 0:
        raise ValueError("id_curve is empty: the model reports no layers.")
    start = min(math.floor(rule.skip_fraction * num_layers), num_layers - 1)
    candidates = curve[start:]
    if np.all(np.isnan(candidates)):
        raise ValueError(
            f"The intrinsic dimension is undefined at every candidate layer {start}..{num_layers - 1} (the "
            "calibration texts gave fewer than 3 distinct last-token states). Pass more varied "
            "calibration_texts, or explicit layers=[...]."
        )
    best = start + int(np.nanargmin(candidates))
    width = math.floor(rule.window_fraction * num_layers)
    return tuple(range(best, min(best + width, num_layers - 1) + 1))


def middle_window(num_layers: int, rule: LayerSelectionConfig | None = None) -> tuple[int, ...]:
    """The ``"middle"`` rule: a window of ``floor(window_fraction * L) + 1`` layers at ``position``.

    The window starts at ``round(position * (L - width))``: with the defaults, layers 13-16 of SmolLM2's 30
    and 8-9 of Gemma-3-270M's 18.

    Args:
        num_layers: ``L``, the number of decoder layers.
        rule: The rule; the defaults when ``None``.

    Returns:
        The selected layer indices, ascending.

    Example:
        >>> middle_window(32)
        (14, 15, 16, 17)
    """
    rule = rule or LayerSelectionConfig()
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers}: the model reports no layers.")
    width = min(math.floor(rule.window_fraction * num_layers) + 1, num_layers)
    start = round(rule.position * (num_layers - width))
    return tuple(range(start, start + width))


def selection_cache_key(
    fingerprint: str, template: str, texts: Sequence[str], rule: LayerSelectionConfig, dtype: str
) -> str:
    """Hash of everything a selection depends on: weights identity, template, texts, rule and dtype."""
    digest = hashlib.sha256()
    payload = {"v": _CACHE_VERSION, "model": fingerprint, "template": template, "rule": asdict(rule), "dtype": dtype}
    digest.update(json.dumps(payload, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / "layers" / f"{key}.json"


def load_cached_selection(cache_dir: Path, key: str) -> LayerSelection | None:
    """Read a cached selection, or ``None`` when absent or unreadable (then it is recomputed)."""
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        curve = tuple(math.nan if v is None else float(v) for v in data["id_curve"])
        return LayerSelection(tuple(int(i) for i in data["layers"]), curve, int(data["num_texts"]), from_cache=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring unreadable layer-selection cache %s (%s); recomputing.", path, exc)
        return None


def save_cached_selection(cache_dir: Path, key: str, selection: LayerSelection, model: str) -> Path:
    """Write a selection atomically (temp file + rename) and return its path."""
    path = _cache_file(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": model,
        "layers": list(selection.layers),
        "id_curve": [None if math.isnan(v) else v for v in selection.id_curve],
        "num_texts": selection.num_texts,
    }
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def resolve_layers(
    config: EmbedderConfig, num_layers: int, select: Callable[[], LayerSelection]
) -> tuple[tuple[int, ...], LayerSelection | None]:
    """The layers an embedder re-routes: none, the explicit ones, the middle window or the ID selection.

    Args:
        config: The embedder's settings (``strategy``, ``layers``, ``selection``).
        num_layers: The model's decoder layers.
        select: Runs the intrinsic-dimension selection (:func:`select_layers`), called only when the rule is it.

    Returns:
        The layers, and the selection when one ran (its ``id_curve``), else ``None``.

    Raises:
        ConfigError: An explicit layer index out of range.
    """
    if not config.spec.reroute:
        if config.layers != "auto":
            logger.info("strategy=%r does not re-route; layers=%s is ignored.", config.strategy, config.layers)
        return (), None
    if config.layers != "auto":
        chosen = tuple(int(i) for i in config.layers)
        bad = [i for i in chosen if i >= num_layers]
        if bad:
            raise ConfigError(
                f"layers={list(chosen)}: {bad} out of range; {config.model!r} has {num_layers} layers "
                f"(valid indices 0..{num_layers - 1})."
            )
        return chosen, None
    if config.selection.rule == "middle":
        return middle_window(num_layers, config.selection), None
    selection = select()
    return selection.layers, selection


def select_layers(
    config: EmbedderConfig,
    weights: str,
    dtype: torch.dtype,
    texts: Sequence[str] | None,
    inputs: InputStage,
    forward: ForwardPass,
    *,
    progress: bool | None = None,
) -> LayerSelection:
    """Run (or read from the cache) the paper's intrinsic-dimension layer selection (docs/method.md).

    Args:
        config: The embedder's settings (its document template, ``selection`` rule, ``cache_dir``...).
        weights: The weights' fingerprint (part of the cache key).
        dtype: The compute dtype (part of the cache key).
        texts: Calibration texts; default :func:`~kvemb_rag.engine.calibration.default_calibration_texts`.
        inputs: The embedder's input stage (calibration texts are tokenised, over-long ones truncated).
        forward: The embedder's forward pass (read at every layer's input, nothing re-routed).
        progress: Show a progress bar (``None``: on a terminal).

    Returns:
        The selection, with the per-layer ID curve (index ``l`` = the input of decoder layer ``l``).
    """
    # The curve and its window do not depend on the rule's choice or the middle rule's position.
    rule = replace(config.selection, rule="intrinsic-dimension", position=0.5)
    texts = list(texts) if texts else default_calibration_texts(rule.num_calibration_texts)
    check_texts(texts)
    template = config.template("document")
    cache_dir = cache_directory(config.cache_dir)
    key = selection_cache_key(weights, template, texts, rule, str(dtype))
    cached = load_cached_selection(cache_dir, key)
    if cached is not None:
        logger.info("Layers %s for %s from the cache %s", list(cached.layers), config.model, cache_dir)
        return cached
    logger.info("Selecting layers of %s over %d calibration texts (once per model)", config.model, len(texts))
    units = inputs.units(inputs.tokenize(texts, "document"), overflow="truncate")
    states: list[torch.Tensor] = []  # per batch (L, b, H)
    batches = length_batches([len(unit.tokens.ids) for unit in units], rule.calibration_batch_size, config.max_padding)
    disable = None if progress is None else not progress
    for batch in tqdm(batches, desc="Selecting layers (intrinsic dimension)", disable=disable):
        states.append(forward.layer_inputs([units[i].tokens.ids for i in batch]))  # (L, b, H)
    per_layer = torch.cat(states, dim=1)  # (L, N, H)
    curve = tuple(twonn_dimension(per_layer[layer]) for layer in range(per_layer.shape[0]))
    selection = LayerSelection(select_window(curve, rule), curve, len(texts))
    path = save_cached_selection(cache_dir, key, selection, config.model)
    logger.info("Selected layers %s of %s (cached in %s)", list(selection.layers), config.model, path)
    return selection
