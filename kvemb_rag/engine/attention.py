"""KV re-routing inside attention, through transformers' public attention registry.

This module is the only place in kvemb-rag that touches transformers internals. It registers
one attention function and its mask function under :data:`ATTENTION_NAME`; a model loaded with
``attn_implementation=ATTENTION_NAME`` calls :func:`kv_reroute_attention` in every attention layer.
Per-call state travels as the forward keyword :data:`STATE_KWARG` (a :class:`RerouteState`), so there is
no module-level mutable state: layers not named in the state, and calls without a state, run
transformers' own SDPA attention unchanged.

At a selected layer (docs/method.md, "Re-routing the last token's key and value"), on the post-RoPE key/value
tensors attention would use:
the key and value of each row's last real token are prepended as one extra slot, visible to every query,
with a scalar bias on its pre-softmax logit; the original causal + padding mask is kept for the other
``T`` keys; queries are not extended, so the layer still outputs ``T`` positions.

The engine's own forward passes no mask (rows are right-padded), so a re-routed layer keeps SDPA's causal
kernel (:func:`_causal_with_slot`); only a layer that receives a real mask (a sliding window, a caller's
padding mask) builds the extended float mask (:func:`extend_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = [
    "ATTENTION_NAME",
    "STATE_KWARG",
    "RerouteState",
    "extend_mask",
    "gguf_architectures",
    "kv_reroute_attention",
    "register",
    "route",
]

#: Name under which the attention and mask functions are registered (namespaced to this package).
ATTENTION_NAME = "kvemb_rag_kv"
#: Forward keyword that carries the per-call :class:`RerouteState`.
STATE_KWARG = "kvemb_state"


@dataclass(frozen=True)
class RerouteState:
    """Per-forward-call re-routing state, passed as ``model(..., kvemb_state=state)``.

    Attributes:
        layers: Decoder-layer indices (``module.layer_idx``) to re-route.
        last_index: ``(B,)`` long tensor, position of each row's last real (non-pad) token.
        bias: Scalar added to the extra slot's logit after the 1/sqrt(d) scaling.
        routed: Filled with the layer indices that actually re-routed (the census).
    """

    layers: frozenset[int]
    last_index: torch.Tensor
    bias: float
    routed: list[int] = field(default_factory=list)
    _masks: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)


def extend_mask(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    q_len: int,
    bias: float,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Additive mask over ``[extra slot; T keys]``: the bias on the slot, the original mask on the rest.

    Args:
        attention_mask: The mask the layer received: ``None`` (plain causal, SDPA's ``is_causal`` path),
            boolean ``(B|1, 1, T, T)`` (True = attend) or additive float ``(B|1, 1, T, T)``.
        batch_size: ``B``.
        q_len: ``T``.
        bias: The slot's logit bias.
        dtype: Dtype of the returned mask (the query's).
        device: Device of the returned mask.

    Returns:
        Float mask ``(B|1, 1, T, T+1)``; never ``None``, because the lengthened keys must not fall back to
        SDPA's upper-left causal alignment.
    """
    neg = torch.finfo(dtype).min
    if attention_mask is None:
        allowed = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()  # (T, T)
        body = torch.zeros(q_len, q_len, dtype=dtype, device=device)  # (T, T)
        body = body.masked_fill(~allowed, neg)  # (T, T)
        body = body[None, None]  # (1, 1, T, T)
    elif attention_mask.dtype == torch.bool:
        body = torch.zeros(attention_mask.shape, dtype=dtype, device=device)  # (B|1, 1, T, T)
        body = body.masked_fill(~attention_mask.to(device), neg)  # (B|1, 1, T, T)
    else:
        body = attention_mask.to(device=device, dtype=dtype)  # (B|1, 1, T, T)
    rows = body.shape[0]
    slot = torch.full((rows, 1, q_len, 1), float(bias), dtype=dtype, device=device)  # (B|1, 1, T, 1)
    return torch.cat([slot, body], dim=-1)  # (B|1, 1, T, T+1)


def kv_reroute_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention with the last token's key/value re-routed as an extra prefix slot at selected layers.

    Same signature and return as transformers' attention functions. ``query`` is ``(B, H_q, T, D)``,
    ``key`` and ``value`` are ``(B, H_kv, T, D)`` (post-RoPE, before GQA expansion); returns
    ``(B, T, H_q, D)`` and no attention weights.
    """
    state = kwargs.pop(STATE_KWARG, None)
    layer_idx = getattr(module, "layer_idx", None)
    if not isinstance(state, RerouteState) or layer_idx not in state.layers:
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    state.routed.append(layer_idx)
    B, H_q, T, D = query.shape
    H_kv = key.shape[1]

    # Last real token of each row, per KV head, as is (post-RoPE, at its own position), docs/method.md "Re-routing".
    index = state.last_index.to(key.device).view(B, 1, 1, 1).expand(B, H_kv, 1, D)  # (B, H_kv, 1, D)
    k_last = key.gather(2, index)  # (B, H_kv, 1, D)
    v_last = value.gather(2, index)  # (B, H_kv, 1, D)
    key = torch.cat([k_last, key], dim=2)  # (B, H_kv, T+1, D)
    value = torch.cat([v_last, value], dim=2)  # (B, H_kv, T+1, D)

    if attention_mask is None:
        dropout_p = dropout if module.training else 0.0
        out = _causal_with_slot(query, key, value, state.bias, scaling, dropout_p)  # (B, H_q, T, D)
        return out.transpose(1, 2).contiguous(), None  # (B, T, H_q, D)

    # A real mask (padding, sliding window): one extended mask per forward call, shared by every selected
    # layer (they get the same input mask).
    cache_key = (id(attention_mask), T, query.dtype, query.device)
    mask = state._masks.get(cache_key)
    if mask is None:
        mask = extend_mask(attention_mask, B, T, state.bias, query.dtype, query.device)  # (B|1, 1, T, T+1)
        state._masks[cache_key] = mask

    out = torch.nn.functional.scaled_dot_product_attention(
        query,  # (B, H_q, T, D)
        key,  # (B, H_kv, T+1, D)
        value,  # (B, H_kv, T+1, D)
        attn_mask=mask,  # (B|1, 1, T, T+1)
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
        enable_gqa=H_q != H_kv,
    )  # (B, H_q, T, D)
    return out.transpose(1, 2).contiguous(), None  # (B, T, H_q, D)


def _causal_with_slot(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: float, scaling: float | None, dropout_p: float
) -> torch.Tensor:
    """Plain causal attention over ``[slot; T keys]`` on SDPA's ``is_causal`` kernel, without a float mask.

    A dummy query is put first, so the square ``(T+1, T+1)`` causal mask lets real query ``i`` (row
    ``i+1``) see the slot and keys ``0..i``: exactly the slot plus the original causal mask. The slot's
    logit bias travels in two extra head dimensions: the queries get ``[1, 1]``, the slot's key
    ``[hi, lo]`` with ``hi + lo = bias / scale`` (``lo`` keeps what ``hi`` loses in a low-precision dtype),
    every other key ``[0, 0]``; values get two zero dimensions, dropped from the output. So
    ``scale * q'.k'`` is ``scale * q.k + bias`` on the slot and ``scale * q.k`` elsewhere.

    Args:
        query: ``(B, H_q, T, D)``.
        key: ``(B, H_kv, T+1, D)``, the slot first.
        value: ``(B, H_kv, T+1, D)``, the slot first.
        bias: The slot's logit bias.
        scaling: The layer's softmax scale (``None``: ``1/sqrt(D)``).
        dropout_p: Attention dropout (0 outside training).

    Returns:
        ``(B, H_q, T, D)``.
    """
    B, H_q, T, D = query.shape  # batch, query heads, tokens, head dim
    H_kv = key.shape[1]  # key/value heads
    scale = D**-0.5 if scaling is None else scaling
    offset = torch.tensor(bias / scale, dtype=torch.float64)  # bias in q.k units
    hi = offset.to(query.dtype)  # ()
    lo = (offset - hi.double()).to(query.dtype)  # ()
    query = torch.cat([query.new_zeros(B, H_q, 1, D), query], dim=2)  # (B, H_q, T+1, D)
    query = torch.cat([query, query.new_ones(B, H_q, T + 1, 2)], dim=3)  # (B, H_q, T+1, D+2)
    extra = key.new_zeros(B, H_kv, T + 1, 2)  # (B, H_kv, T+1, 2)
    extra[:, :, 0, 0] = hi
    extra[:, :, 0, 1] = lo
    key = torch.cat([key, extra], dim=3)  # (B, H_kv, T+1, D+2)
    value = torch.cat([value, value.new_zeros(B, H_kv, T + 1, 2)], dim=3)  # (B, H_kv, T+1, D+2)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=H_q != H_kv
    )  # (B, H_q, T+1, D+2)
    return out[:, :, 1:, :D]  # (B, H_q, T, D)


def register() -> None:
    """Register the attention and mask functions with transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, kv_reroute_attention)
    # Masks arrive as SDPA builds them: None (plain causal, no padding) or boolean (B, 1, T, T).
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def route(model: torch.nn.Module) -> None:
    """Route an already-loaded model's attention through :func:`kv_reroute_attention` (public v5 API).

    A no-op for models loaded with ``attn_implementation=ATTENTION_NAME``. Without a re-routing state the
    function runs transformers' SDPA attention, so generation with the same model is unchanged.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == ATTENTION_NAME:
        return
    register()
    model.set_attn_implementation(ATTENTION_NAME)  # type: ignore[operator]


def gguf_architectures() -> frozenset[str]:
    """GGUF ``general.architecture`` values this transformers release can load (empty when unknown)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # moved in a later release: let transformers' own error speak
        return frozenset()
    return frozenset(GGUF_SUPPORTED_ARCHITECTURES)


register()
