"""Decoders the tests control, whose attention does NOT go through transformers' attention registry.

They are registered with ``AutoConfig`` / ``AutoModel`` (public API) and saved and loaded through the
real ``from_pretrained`` path, so the engine's refusals are tested on models whose behaviour cannot
change with a transformers release (third-party architectures move to the registry over time).

* ``kvemb_test_own_attention``: computes causal attention with its own tensor ops in every layer; the
  registered attention function is never called, so the engine's census must refuse it.
* ``kvemb_test_own_table``: picks its attention class from its own table keyed by the requested
  implementation (as GPT-J did before transformers 5.24), so loading with kvemb-rag's implementation
  fails inside the model's constructor.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from tests.tiny_models import VOCAB, word_tokenizer


def _config_class(model_type: str) -> type[PretrainedConfig]:
    """A tiny config class of its own ``model_type`` (each needs its own ``__init__`` in transformers 5)."""

    class Config(PretrainedConfig):
        def __init__(
            self, vocab_size: int = VOCAB, hidden_size: int = 32, num_hidden_layers: int = 2, **kwargs: object
        ) -> None:
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.num_hidden_layers = num_hidden_layers
            super().__init__(**kwargs)

    Config.model_type = model_type
    Config.__name__ = Config.__qualname__ = "".join(w.title() for w in model_type.split("_")) + "Config"
    return Config


OwnAttentionConfig = _config_class("kvemb_test_own_attention")
OwnTableConfig = _config_class("kvemb_test_own_table")


class _CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, T, H = x.shape  # batch, tokens, hidden
        q, k, v = self.qkv(x).split(H, dim=-1)  # 3 x (B, T, H)
        scores = q @ k.transpose(1, 2) / H**0.5  # (B, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        scores = scores.masked_fill(~causal, float("-inf"))  # (B, T, T)
        return scores.softmax(-1) @ v  # (B, T, H)


class OwnAttentionModel(PreTrainedModel):
    config_class = OwnAttentionConfig
    base_model_prefix = "model"
    _supports_attention_backend = True  # accepts any registered name, then ignores it

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_CausalSelfAttention(config.hidden_size) for _ in range(config.num_hidden_layers))
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, output_hidden_states: bool = False, **kwargs: object
    ) -> BaseModelOutputWithPast:
        h = self.embed(input_ids)  # (B, T, H)
        states = [h]
        for layer in self.layers:
            h = h + layer(h)  # (B, T, H)
            states.append(h)
        return BaseModelOutputWithPast(
            last_hidden_state=h, hidden_states=tuple(states) if output_hidden_states else None
        )


class OwnTableModel(OwnAttentionModel):
    config_class = OwnTableConfig
    _ATTENTION_CLASSES: ClassVar[dict[str, type[nn.Module]]] = {
        "eager": _CausalSelfAttention,
        "sdpa": _CausalSelfAttention,
    }

    def __init__(self, config: PretrainedConfig) -> None:
        self._ATTENTION_CLASSES[config._attn_implementation]  # KeyError for any other implementation
        super().__init__(config)


for _config, _model in ((OwnAttentionConfig, OwnAttentionModel), (OwnTableConfig, OwnTableModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)


def save_foreign(kind: str, directory: Path) -> str:
    """Save a random ``"own_attention"`` or ``"own_table"`` model and a tokenizer; return the folder."""
    torch.manual_seed(0)
    if kind == "own_attention":
        model: PreTrainedModel = OwnAttentionModel(OwnAttentionConfig())
    elif kind == "own_table":
        model = OwnTableModel(OwnTableConfig(attn_implementation="eager"))
    else:
        raise ValueError(kind)
    model.save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    return str(directory)
