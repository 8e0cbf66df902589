"""Faithfulness: an independent plain-tensor reference of KV re-routing must match the engine (fp32, 1e-5).

The reference below re-implements the decoder forward from the saved weights with nothing from
transformers' modelling code: RMSNorm, q/k/v projections (+ biases), per-head q/k norms, RoPE, attention
with the extra prefix slot (method.md step 2) under an explicit causal + padding mask, SwiGLU MLP, final
norm, and hybrid pooling (step 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from kvemb_rag import KVEmbedder
from kvemb_rag.attention import STATE_KWARG, RerouteState
from tests.tiny_models import ARCHITECTURES, build

TOL = float(__import__("os").environ.get("REF_TOL", "1e-5"))
TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "the big red house is on a small green tree and the blue cat ran fast",
    "what is it about ?",
]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    arch = request.param
    return arch, build(arch, tmp_path_factory.mktemp(arch))


# ------------------------------------------------------------------------------------ the reference
class Reference:
    """Plain-tensor decoder forward with KV re-routing, from a safetensors file and config.json."""

    def __init__(self, directory: Path) -> None:
        import json

        self.cfg = json.loads((directory / "config.json").read_text())
        self.w = {k.removeprefix("model."): v.double() for k, v in load_file(directory / "model.safetensors").items()}
        c = self.cfg
        self.H = c["num_attention_heads"]
        self.H_kv = c["num_key_value_heads"]
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.eps = c["rms_norm_eps"]
        rope = c.get("rope_parameters") or {}
        self.theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        T, D = x.shape[-2], x.shape[-1]
        inv = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
        cos = torch.cat([ang.cos(), ang.cos()], -1)
        sin = torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        rotated = torch.cat([-x2, x1], -1)
        return x * cos + rotated * sin

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def forward(
        self, ids: list[list[int]], layers: set[int], bias: float
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Return final hidden states (B, T, hidden), the padding mask (B, T) and per-layer inputs."""
        B, T = len(ids), max(len(r) for r in ids)
        tokens = torch.zeros(B, T, dtype=torch.long)
        pad = torch.zeros(B, T, dtype=torch.bool)
        for b, r in enumerate(ids):
            tokens[b, : len(r)] = torch.tensor(r)
            pad[b, : len(r)] = True
        last = pad.sum(1) - 1
        x = self.w["embed_tokens.weight"][tokens]  # (B, T, C)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = causal[None] & pad[:, None, :]  # (B, T, T): key must be real and not in the future
        inputs = []
        for i in range(self.cfg["num_hidden_layers"]):
            inputs.append(x)
            p = f"layers.{i}."
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = self.linear(h, p + "self_attn.q_proj").view(B, T, self.H, self.D)
            k = self.linear(h, p + "self_attn.k_proj").view(B, T, self.H_kv, self.D)
            v = self.linear(h, p + "self_attn.v_proj").view(B, T, self.H_kv, self.D)
            if p + "self_attn.q_norm.weight" in self.w:
                q = self.rms(q, self.w[p + "self_attn.q_norm.weight"])
                k = self.rms(k, self.w[p + "self_attn.k_norm.weight"])
            q = self.rope(q.transpose(1, 2))  # (B, H, T, D)
            k = self.rope(k.transpose(1, 2))  # (B, H_kv, T, D)
            v = v.transpose(1, 2)
            rep = self.H // self.H_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.D)  # (B, H, T, T)
            logits = logits.masked_fill(~allowed[:, None], -math.inf)
            if i in layers:
                rows = torch.arange(B)
                k0 = k[rows, :, last]  # (B, H, D): the last real token's key, post-RoPE
                v0 = v[rows, :, last]
                slot = (q * k0[:, :, None, :]).sum(-1, keepdim=True) / math.sqrt(self.D) + bias  # (B, H, T, 1)
                logits = torch.cat([slot, logits], -1)
                v = torch.cat([v0[:, :, None, :], v], 2)
            attn = torch.softmax(logits, -1) @ v  # (B, H, T, D)
            attn = attn.transpose(1, 2).reshape(B, T, self.H * self.D)
            x = x + self.linear(attn, p + "self_attn.o_proj")
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = self.linear(h, p + "mlp.gate_proj")
            up = self.linear(h, p + "mlp.up_proj")
            x = x + self.linear(torch.nn.functional.silu(gate) * up, p + "mlp.down_proj")
        return self.rms(x, self.w["norm.weight"]), pad, inputs

    def embed(self, ids: list[list[int]], layers: set[int], bias: float) -> np.ndarray:
        h, pad, _ = self.forward(ids, layers, bias)
        last = h[torch.arange(len(ids)), pad.sum(1) - 1]
        mean = (h * pad[..., None]).sum(1) / pad.sum(1, keepdim=True)
        e = (last + mean) / 2
        return torch.nn.functional.normalize(e, dim=-1).numpy()


# ------------------------------------------------------------------------------------ helpers
def _ids(emb: KVEmbedder, texts: list[str], prompt: str = "document") -> list[list[int]]:
    return [emb.tokenizer(emb.format(t, prompt))["input_ids"] for t in texts]


def _padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in ids)
    x = torch.zeros(len(ids), T, dtype=torch.long)
    m = torch.zeros(len(ids), T, dtype=torch.long)
    for b, r in enumerate(ids):
        x[b, : len(r)] = torch.tensor(r)
        m[b, : len(r)] = 1
    return x, m


def _engine(directory: Path, tmp_path: Path, **kw: object) -> KVEmbedder:
    kw.setdefault("layers", [1, 2])
    return KVEmbedder(str(directory), device="cpu", dtype="float32", cache_dir=str(tmp_path), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("mask_form", ["none", "bool", "float"])
@pytest.mark.parametrize("bias", [1.0, -0.5])
def test_hidden_states_match_reference(tiny: tuple[str, Path], tmp_path: Path, mask_form: str, bias: float) -> None:
    """Every mask form the attention function can receive gives the reference's states on real tokens."""
    _, directory = tiny
    emb = _engine(directory, tmp_path, bias=bias)
    ids = _ids(emb, TEXTS)
    x, m = _padded(ids)
    B, T = x.shape
    if mask_form == "none":
        mask = None
    elif mask_form == "bool":
        mask = m  # 2-D padding mask: transformers builds a boolean (B, 1, T, T) mask from it
    else:
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & m.bool()[:, None, :]
        mask = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    state = RerouteState(layers=frozenset(emb.layers), last_index=m.sum(1) - 1, bias=bias)
    with torch.inference_mode():
        out = emb.model(input_ids=x, attention_mask=mask, use_cache=False, **{STATE_KWARG: state})
    ref, pad, _ = Reference(directory).forward(ids, set(emb.layers), bias)
    assert sorted(set(state.routed)) == [1, 2]
    got = out.last_hidden_state.double()[pad]
    want = ref[pad]
    assert torch.allclose(got, want, atol=TOL, rtol=0), float((got - want).abs().max())


def test_encode_matches_reference_embedding(tiny: tuple[str, Path], tmp_path: Path) -> None:
    """The public encode() path (length-sorted batches, no mask, pooling) equals the reference embedding."""
    _, directory = tiny
    emb = _engine(directory, tmp_path, batch_size=3)
    got = emb.encode_document(TEXTS)
    want = Reference(directory).embed(_ids(emb, TEXTS), set(emb.layers), 1.0)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    q = emb.encode_query(TEXTS[:2])
    want_q = Reference(directory).embed(_ids(emb, TEXTS[:2], "query"), set(emb.layers), 1.0)
    np.testing.assert_allclose(q, want_q, atol=TOL, rtol=0)


def test_rerouting_changes_the_embedding(tiny: tuple[str, Path], tmp_path: Path) -> None:
    """Guard against a reference and engine that agree because re-routing does nothing."""
    _, directory = tiny
    kv = _engine(directory, tmp_path).encode(TEXTS)
    ablation = _engine(directory, tmp_path, strategy="kv-ablation").encode(TEXTS)
    assert np.abs(kv - ablation).max() > 1e-3


def test_no_layers_is_the_plain_model(tiny: tuple[str, Path], tmp_path: Path) -> None:
    _, directory = tiny
    emb = _engine(directory, tmp_path, layers=[])
    assert emb.layers == ()
    plain = AutoModel.from_pretrained(str(directory), attn_implementation="sdpa", dtype=torch.float32).eval()
    x, m = _padded(_ids(emb, TEXTS))
    with torch.inference_mode():
        ours = emb.model(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
        theirs = plain(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
    assert torch.equal(ours, theirs)


def test_batch_composition_invariance(tiny: tuple[str, Path], tmp_path: Path) -> None:
    _, directory = tiny
    emb = _engine(directory, tmp_path)
    alone = emb.encode(TEXTS[1])
    padded = emb.with_options(max_padding=1.0)  # fixed-size batches: every shorter row is padded
    for engine in (emb, padded):
        for batch_size in (2, 4):
            batched = engine.encode(TEXTS, batch_size=batch_size)
            np.testing.assert_allclose(batched[1], alone, atol=TOL, rtol=0)


def test_causality_from_the_rerouted_layer_on(tiny: tuple[str, Path], tmp_path: Path) -> None:
    """Changing the last token changes the first token's state from layer l on, and not before."""
    _, directory = tiny
    layer = 2
    emb = _engine(directory, tmp_path, layers=[layer])
    a = emb.tokenizer(emb.format("the cat sat on the mat"))["input_ids"]
    b = [*a[:-1], emb.tokenizer.convert_tokens_to_ids("tree")]
    assert a[-1] != b[-1]
    x = torch.tensor([a, b])
    state = RerouteState(layers=frozenset([layer]), last_index=torch.tensor([len(a) - 1] * 2), bias=1.0)
    with torch.inference_mode():
        hs = emb.model(input_ids=x, use_cache=False, output_hidden_states=True, **{STATE_KWARG: state}).hidden_states
    # hidden_states[i] is the input of layer i; layer `layer`'s output is hidden_states[layer + 1].
    for i, h in enumerate(hs):
        first_token_diff = float((h[0, 0] - h[1, 0]).abs().max())
        if i <= layer:
            assert first_token_diff == 0.0, i
        else:
            assert first_token_diff > 1e-4, i


def test_prefix_slot_is_visible_to_the_first_token(tiny: tuple[str, Path], tmp_path: Path) -> None:
    """Without re-routing the first token never sees later tokens (the same comparison stays equal)."""
    _, directory = tiny
    emb = _engine(directory, tmp_path, strategy="kv-ablation")
    a = emb.tokenizer(emb.format("the cat sat on the mat"))["input_ids"]
    b = [*a[:-1], emb.tokenizer.convert_tokens_to_ids("tree")]
    with torch.inference_mode():
        h = emb.model(input_ids=torch.tensor([a, b]), use_cache=False).last_hidden_state
    assert torch.equal(h[0, 0], h[1, 0])
