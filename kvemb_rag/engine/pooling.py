"""Pooling of the final hidden states into one vector per row."""

from __future__ import annotations

import torch

from kvemb_rag.engine.config import Pooling
from kvemb_rag.errors import ConfigError

__all__ = ["pool"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool ``hidden`` states per row.

    Args:
        hidden: ``(B, T, H)`` final hidden states (after the model's final norm).
        mask: ``(B, T)`` weights of the positions that the mean runs over: every real token for
            ``"mean"``/``"hybrid"`` (prompt and BOS included, docs/method.md "Pooling"), the second copy of the
            text for ``"echo"``.
        last_index: ``(B,)`` position of each row's last real token.
        pooling: ``"last"``, ``"mean"``, ``"hybrid"`` (``(last + mean) / 2``) or ``"echo"`` (a mean).

    Returns:
        ``(B, H)`` float32, not normalised.
    """
    B = hidden.shape[0]
    hidden = hidden.float()  # (B, T, H)
    rows = torch.arange(B, device=hidden.device)  # (B,)
    last = hidden[rows, last_index.to(hidden.device)]  # (B, H)
    if pooling == "last":
        return last
    weights = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, H)
    if pooling in ("mean", "echo"):
        return mean
    if pooling == "hybrid":
        return (last + mean) / 2  # (B, H)
    raise ConfigError(f"pooling={pooling!r} is not valid; choose one of 'last', 'mean', 'hybrid', 'echo'.")
