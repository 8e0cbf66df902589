"""The batched forward pass: tokenised units, padded batches, one forward with re-routing, pooled vectors.

:meth:`ForwardPass.pool_units` is where the pooled vectors are produced (one per unit, before an input's
chunks are combined and before normalisation); :func:`combine_units` turns them into one vector per input.

Shapes: ``U`` units (whole inputs or chunks), ``B`` rows of a batch, ``T`` its longest row (the others padded
to it), ``H`` the hidden size (= the embedding size), ``L`` decoder layers, ``n`` inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kvemb_rag.engine.attention import STATE_KWARG, RerouteState
from kvemb_rag.engine.batching import length_batches
from kvemb_rag.engine.chunking import combine_chunk_vectors
from kvemb_rag.engine.config import EmbedderConfig, Pooling
from kvemb_rag.engine.inputs import TokenizedText, Unit
from kvemb_rag.engine.loader import LoadedModel
from kvemb_rag.engine.pooling import pool
from kvemb_rag.errors import UnsupportedModelError

__all__ = ["ForwardPass", "combine_units", "pad"]


def pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id rows into one batch: ``(B, T)`` ids and ``(B,)`` positions of each row's last token."""
    B = len(rows)
    T = max(len(r) for r in rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)  # (len(row),)
    last_index = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)  # (B,)
    return input_ids.to(device), last_index.to(device)


@dataclass(frozen=True, eq=False)
class ForwardPass:
    """The model's forward pass for one embedder: re-routed layers, bias and pooling fixed.

    Attributes:
        model: The loaded base model.
        hidden_size: Its hidden size ``H``.
        num_layers: Its decoder layers ``L``.
        pad_id: The tokenizer's pad id.
        device: Where the model runs.
        pooling: The pooling in effect.
        bias: Logit bias of the re-routed slot.
        max_padding: Padding budget of a batch (:func:`~kvemb_rag.engine.batching.length_batches`).
        name: The model's name, for error messages.
        layers: The re-routed layers (``()``: a plain forward).
    """

    model: torch.nn.Module
    hidden_size: int
    num_layers: int
    pad_id: int
    device: torch.device
    pooling: Pooling
    bias: float
    max_padding: float
    name: str
    layers: tuple[int, ...] = ()

    @classmethod
    def of(cls, loaded: LoadedModel, config: EmbedderConfig) -> ForwardPass:
        """The forward pass of ``loaded`` with ``config``'s pooling and bias, re-routing no layer yet."""
        return cls(
            loaded.model,
            loaded.hidden_size,
            loaded.num_layers,
            int(loaded.tokenizer.pad_token_id),
            loaded.device,
            config.pooling_mode,
            float(config.bias),
            config.max_padding,
            config.model,
        )

    def rerouting(self, layers: Sequence[int]) -> ForwardPass:
        """This forward pass re-routing ``layers``."""
        return dataclasses.replace(self, layers=tuple(layers))

    def pooled(self, rows: Sequence[TokenizedText]) -> torch.Tensor:
        """One forward pass over ``rows``; returns ``(B, H)`` pooled float32 vectors (not normalised).

        Raises:
            UnsupportedModelError: A re-routed layer's attention did not go through the registered function.
        """
        input_ids, last_index = pad([r.ids for r in rows], self.pad_id, self.device)  # (B, T), (B,)
        B, T = input_ids.shape
        positions = torch.arange(T, device=self.device)  # (T,)
        real = positions[None, :] <= last_index[:, None]  # (B, T)
        kwargs: dict[str, Any] = {}
        state = None
        if self.layers:
            state = RerouteState(layers=frozenset(self.layers), last_index=last_index, bias=self.bias)
            kwargs[STATE_KWARG] = state
        with torch.inference_mode():
            # No attention mask: rows are right-padded, so under the causal mask no real token can see a pad;
            # pads' own states are never pooled. Every unselected layer keeps SDPA's is_causal fast path.
            out = self.model(input_ids=input_ids, use_cache=False, **kwargs)  # last_hidden_state (B, T, H)
        if state is not None and sorted(set(state.routed)) != list(self.layers):
            missing = sorted(set(self.layers) - set(state.routed))
            raise UnsupportedModelError(
                f"Re-routing did not reach layers {missing} of {self.name!r} "
                f"({type(self.model).__name__}); its attention does not go through transformers' attention "
                "registry for those layers, so KV-Embedding cannot run on it."
            )
        mask = real  # (B, T)
        if self.pooling == "echo":
            mask = torch.zeros(B, T, dtype=torch.bool, device=self.device)  # (B, T)
            for b, row in enumerate(rows):
                if row.pool_mask is not None:
                    mask[b, : len(row.pool_mask)] = torch.tensor(row.pool_mask, dtype=torch.bool)
        return pool(out.last_hidden_state, mask, last_index, self.pooling)  # (B, H)

    def pool_units(self, units: Sequence[Unit], batch_size: int, progress: bool | None) -> torch.Tensor:
        """The pooled vectors: ``(U, H)`` float32 on the CPU, one per unit, in the units' order.

        Units are length-sorted into batches of at most ``batch_size`` rows and ``max_padding`` padding. The
        vectors are as pooled: an input's chunks are not combined yet and nothing is normalised
        (:func:`combine_units` does both), so a post-processing of pooled vectors belongs here.

        Args:
            units: The rows.
            batch_size: Most rows per forward pass.
            progress: Show a progress bar (``None``: on a terminal).
        """
        unit_vectors = torch.empty(len(units), self.hidden_size, dtype=torch.float32)  # (U, H)
        batches = length_batches([len(unit.tokens.ids) for unit in units], batch_size, self.max_padding)
        for batch in tqdm(batches, desc="Encoding", disable=None if progress is None else not progress):
            pooled = self.pooled([units[i].tokens for i in batch])  # (b, H)
            unit_vectors[batch] = pooled.cpu()  # (U, H) rows `batch`
        return unit_vectors

    def check_routing(self, row: TokenizedText) -> None:
        """Refuse to run if any re-routed layer does not route through the registered attention function."""
        self.pooled([row])

    def layer_inputs(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every decoder layer's input at each row's last token: ``(L, B, H)`` float32 on the CPU (no re-routing).

        ``[l]`` is what layer ``l``'s re-routed key/value would be projected from (layer selection reads it).
        """
        input_ids, last_index = pad(rows, self.pad_id, self.device)  # (B, T), (B,)
        B, L = input_ids.shape[0], self.num_layers
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=False, output_hidden_states=True)  # L + 1 x (B, T, H)
        batch = torch.arange(B, device=input_ids.device)  # (B,)
        return torch.stack([out.hidden_states[layer][batch, last_index].float().cpu() for layer in range(L)])


def combine_units(units: Sequence[Unit], unit_vectors: torch.Tensor, n: int, normalize: bool) -> np.ndarray:
    """One vector per input from its units' pooled vectors: ``(n, H)`` float32.

    An input of one unit keeps its pooled vector; an over-long input's chunk vectors are normalised and
    combined by :func:`~kvemb_rag.engine.chunking.combine_chunk_vectors` (token-count-weighted mean).

    Args:
        units: The units, each naming its input (``owner``).
        unit_vectors: ``(U, H)`` pooled vectors (:meth:`ForwardPass.pool_units`).
        n: Number of inputs.
        normalize: L2-normalise the result.
    """
    H = unit_vectors.shape[1]
    groups: dict[int, list[int]] = {}
    for u, unit in enumerate(units):
        groups.setdefault(unit.owner, []).append(u)
    vectors = np.empty((n, H), dtype=np.float32)  # (n, H)
    for i, rows in groups.items():
        if len(rows) == 1:
            vectors[i] = unit_vectors[rows[0]].numpy()  # (H,)
        else:
            chunk_vectors = torch.nn.functional.normalize(unit_vectors[rows], dim=-1)  # (n_chunks, H)
            vectors[i] = combine_chunk_vectors(chunk_vectors.numpy(), [len(units[r].tokens.ids) for r in rows])
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
        vectors = vectors / np.maximum(norms, 1e-12)  # (n, H)
    return vectors.astype(np.float32, copy=False)
