"""Tiny random decoders built from configs and saved to disk (loaded through the real from_pretrained)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

REPO = Path(__file__).resolve().parents[1]

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per KV head
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
GEMMA3_SLIDING, GEMMA3_FULL = "sliding_attention", "full_attention"


def _config(arch: str):
    if arch == "llama":
        return LlamaConfig(**_COMMON), LlamaForCausalLM
    if arch == "mistral":
        return MistralConfig(**_COMMON, sliding_window=None), MistralForCausalLM
    if arch == "qwen2":
        return Qwen2Config(**_COMMON), Qwen2ForCausalLM  # q/k/v projections carry biases
    if arch == "qwen3":
        return Qwen3Config(**_COMMON, head_dim=24), Qwen3ForCausalLM  # per-head q/k norms, head_dim != hidden/heads
    if arch == "gemma3_text":
        # Interleaved sliding/full layers with a window far shorter than the test texts; the reference tests
        # re-route layers 1 (sliding) and 2 (full). Scaling by query_pre_attn_scalar != head_dim, distinct
        # local/global RoPE bases, (1 + w) RMSNorms, sandwich norms, scaled embeddings, GeGLU MLP.
        config = Gemma3TextConfig(
            **_COMMON,
            head_dim=24,
            query_pre_attn_scalar=32,
            sliding_window=4,
            layer_types=[GEMMA3_SLIDING, GEMMA3_SLIDING, GEMMA3_FULL, GEMMA3_SLIDING],
            rope_parameters={
                GEMMA3_SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
                GEMMA3_FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
        )
        return config, Gemma3ForCausalLM
    raise ValueError(arch)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer over a fixed vocabulary (unknown words map to [UNK])."""
    words = ["[PAD]", "[UNK]", "<s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words += ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", "fast", "Context:", "Query:", "Compress", "in",
              "one", "word:", "Context", "Query", ".", ",", "?", "This", "sentence", ":", '"', "means", "Rewrite",
              "rewritten", "is", "it", "about", "what", "red", "blue", "green", "big", "small", "house", "tree"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
    return fast


def build(arch: str, directory: Path, seed: int | None = None) -> Path:
    """Save a random ``arch`` model and a tokenizer in ``directory`` and return it."""
    torch.manual_seed(ARCHITECTURES.index(arch) if seed is None else seed)
    config, cls = _config(arch)
    model = cls(config)
    with torch.no_grad():  # larger-than-default weights so attention patterns are far from uniform
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim == 2:
                p.normal_(0.0, 0.12)
            else:
                p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["model_type"] == arch
    return directory
