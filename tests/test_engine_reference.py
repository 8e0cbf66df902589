"""Faithfulness: an independent plain-tensor reference of KV re-routing must match the engine (fp32, 1e-5).

The reference below re-implements the decoder forward from the saved weights with nothing from
transformers' modelling code: RMSNorm, q/k/v projections (+ biases), per-head q/k norms, RoPE, attention
with the extra prefix slot (method.md step 2) under an explicit causal + padding (+ sliding-window) mask,
SwiGLU MLP, final norm, and hybrid pooling (step 3); for Gemma 3 text also the scaled embeddings,
``(1 + w)`` and sandwich norms, GeGLU MLP, ``query_pre_attn_scalar`` scaling and per-layer-type RoPE bases.
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
from kvemb_rag.engine.attention import STATE_KWARG, RerouteState
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
SLIDING, FULL = "sliding_attention", "full_attention"


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Reference:
    """Plain-tensor decoder forward with KV re-routing, from a safetensors file and config.json.

    Llama-style decoders (llama, mistral, qwen2, qwen3) and Gemma 3 text (``model_type == "gemma3_text"``):
    embeddings scaled by sqrt(hidden), ``(1 + w)`` RMSNorms, sandwich norms around attention and MLP, GeGLU
    (tanh) MLP, ``query_pre_attn_scalar ** -0.5`` scaling, and per-layer-type attention: sliding-window layers
    (a query at ``t`` sees keys ``t - window < s <= t``) with the local RoPE base, full layers with the global one.
    The re-routed slot is visible to every query, also on sliding layers, whatever the window.
    """

    def __init__(self, directory: Path) -> None:
        import json

        self.cfg = json.loads((directory / "config.json").read_text())
        self.w = {k.removeprefix("model."): v.double() for k, v in load_file(directory / "model.safetensors").items()}
        c = self.cfg
        self.gemma = c["model_type"] == "gemma3_text"
        if self.gemma:
            assert not c.get("use_bidirectional_attention"), "the reference covers causal Gemma 3 only"
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.H_kv = c["num_key_value_heads"]
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.eps = c["rms_norm_eps"]
        self.scale = c.get("query_pre_attn_scalar", self.D) ** -0.5
        self.act = {"silu": torch.nn.functional.silu, "gelu_pytorch_tanh": gelu_tanh}[
            c.get("hidden_activation") or c["hidden_act"]
        ]
        self.layer_types = c.get("layer_types") or [FULL] * self.L
        self.window = c.get("sliding_window")  # used on SLIDING layers only
        # transformers scales embeddings by a float32 tensor sqrt(hidden) cast to the weights' dtype (fp32 here)
        self.embed_scale = float(torch.tensor(c["hidden_size"] ** 0.5, dtype=torch.float32)) if self.gemma else 1.0
        rope = c.get("rope_parameters") or {}
        per_type = {t: rope[t] for t in (SLIDING, FULL) if isinstance(rope.get(t), dict)}  # per layer type, or one
        self.theta = {
            t: (per_type.get(t) or rope).get("rope_theta", c.get("rope_theta", 10000.0)) for t in (SLIDING, FULL)
        }
        for params in per_type.values() or [rope]:
            assert params.get("rope_type", "default") == "default", params

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * (1.0 + w) if self.gemma else x * w

    def rope(self, x: torch.Tensor, theta: float) -> torch.Tensor:
        T, D = x.shape[-2], x.shape[-1]
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
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

    def allowed(self, pad: torch.Tensor, layer_type: str) -> torch.Tensor:
        """(B, T, T) visibility of key s to query t: real, not in the future, and within the window if sliding."""
        T = pad.shape[1]
        t = torch.arange(T)[:, None]  # query positions
        s = torch.arange(T)[None, :]  # key positions
        visible = s <= t  # (T, T)
        if layer_type == SLIDING and self.window is not None:
            visible = visible & (t - s < self.window)
        return visible[None] & pad[:, None, :]  # (B, T, T)

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
        x = self.w["embed_tokens.weight"][tokens] * self.embed_scale  # (B, T, C)
        inputs = []
        for i in range(self.L):
            inputs.append(x)
            p = f"layers.{i}."
            kind = self.layer_types[i]
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = self.linear(h, p + "self_attn.q_proj").view(B, T, self.H, self.D)
            k = self.linear(h, p + "self_attn.k_proj").view(B, T, self.H_kv, self.D)
            v = self.linear(h, p + "self_attn.v_proj").view(B, T, self.H_kv, self.D)
            if p + "self_attn.q_norm.weight" in self.w:
                q = self.rms(q, self.w[p + "self_attn.q_norm.weight"])
                k = self.rms(k, self.w[p + "self_attn.k_norm.weight"])
            q = self.rope(q.transpose(1, 2), self.theta[kind])  # (B, H, T, D)
            k = self.rope(k.transpose(1, 2), self.theta[kind])  # (B, H_kv, T, D)
            v = v.transpose(1, 2)
            rep = self.H // self.H_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            allowed = self.allowed(pad, kind)  # (B, T, T)
            logits = q @ k.transpose(-1, -2) * self.scale  # (B, H, T, T)
            logits = logits.masked_fill(~allowed[:, None], -math.inf)
            if i in layers:
                rows = torch.arange(B)
                k0 = k[rows, :, last]  # (B, H, D): the last real token's key, post-RoPE
                v0 = v[rows, :, last]
                slot = (q * k0[:, :, None, :]).sum(-1, keepdim=True) * self.scale + bias  # (B, H, T, 1)
                logits = torch.cat([slot, logits], -1)  # the slot ignores causality and the window
                v = torch.cat([v0[:, :, None, :], v], 2)
                allowed = torch.cat([torch.ones(B, T, 1, dtype=torch.bool), allowed], -1)  # (B, T, 1+T)
            probs = torch.softmax(logits, -1)  # (B, H, T, T|1+T)
            # A pad query more than a window past the last real token sees no key: zero, not NaN (which
            # 0 * NaN would carry into real rows of the next layer); only pad rows ever hit this.
            probs = probs.masked_fill(~allowed.any(-1)[:, None, :, None], 0.0)
            attn = probs @ v  # (B, H, T, D)
            attn = attn.transpose(1, 2).reshape(B, T, self.H * self.D)
            attn = self.linear(attn, p + "self_attn.o_proj")
            if self.gemma:  # sandwich norms: normalise each branch's output before the residual add
                x = x + self.rms(attn, self.w[p + "post_attention_layernorm.weight"])
                h = self.rms(x, self.w[p + "pre_feedforward_layernorm.weight"])
            else:
                x = x + attn
                h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = self.linear(h, p + "mlp.gate_proj")
            up = self.linear(h, p + "mlp.up_proj")
            mlp = self.linear(self.act(gate) * up, p + "mlp.down_proj")
            if self.gemma:
                mlp = self.rms(mlp, self.w[p + "post_feedforward_layernorm.weight"])
            x = x + mlp
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


def _float_masks(ref: Reference, pad: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive (B, 1, T, T) masks; per layer type when there are several (a single 4-D mask reaches every
    layer as is, so a model with sliding layers takes a {layer_type: mask} mapping instead)."""
    masks = {
        kind: torch.zeros(pad.shape[0], 1, pad.shape[1], pad.shape[1]).masked_fill(
            ~ref.allowed(pad, kind)[:, None], torch.finfo(torch.float32).min
        )
        for kind in set(ref.layer_types)
    }
    return masks if len(masks) > 1 else masks.popitem()[1]


def _engine(directory: Path, tmp_path: Path, **kw: object) -> KVEmbedder:
    """The engine as the reference computes it: uncentred (tests/test_centring.py checks centring on top)."""
    kw.setdefault("layers", [1, 2])
    kw.setdefault("centring", False)
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
    if mask_form == "none":
        mask = None
    elif mask_form == "bool":
        mask = m  # 2-D padding mask: transformers builds a boolean (B, 1, T, T) mask from it
    else:
        mask = _float_masks(Reference(directory), m.bool())
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


@pytest.mark.parametrize("layer", [1, 2])  # Gemma 3: a sliding and a full layer
def test_causality_from_the_rerouted_layer_on(tiny: tuple[str, Path], tmp_path: Path, layer: int) -> None:
    """Changing the last token changes the first token's state from layer l on, and not before.

    On a sliding-window layer the last token is outside the first token's window too: the slot ignores both.
    """
    _, directory = tiny
    emb = _engine(directory, tmp_path, layers=[layer])
    a = emb.tokenizer(emb.format("the cat sat on the mat"))["input_ids"]
    b = [*a[:-1], emb.tokenizer.convert_tokens_to_ids("tree")]
    assert a[-1] != b[-1]
    window = Reference(directory).window
    assert window is None or len(a) - 1 >= window
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


def test_gemma3_sliding_and_full_rerouted_layers(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Gemma 3: re-routing on a sliding (1) and a full (2) layer, padded texts longer than the window.

    The engine matches the reference, and the setup really exercises the window: the same reference without
    it (every layer full) disagrees with the engine.
    """
    directory = build("gemma3_text", tmp_path_factory.mktemp("gemma3_window"))
    ref = Reference(directory)
    assert [ref.layer_types[i] for i in (1, 2)] == [SLIDING, FULL]
    assert ref.theta[SLIDING] != ref.theta[FULL] and ref.scale != ref.D**-0.5
    emb = _engine(directory, tmp_path)
    ids = _ids(emb, TEXTS)
    assert min(len(r) for r in ids) > ref.window + 1 and len({len(r) for r in ids}) > 1
    x, m = _padded(ids)
    state = RerouteState(layers=frozenset([1, 2]), last_index=m.sum(1) - 1, bias=1.0)
    with torch.inference_mode():
        out = emb.model(input_ids=x, attention_mask=m, use_cache=False, **{STATE_KWARG: state})
    assert sorted(set(state.routed)) == [1, 2]
    want, pad, _ = ref.forward(ids, {1, 2}, 1.0)
    got = out.last_hidden_state.double()[pad]
    assert torch.allclose(got, want[pad], atol=TOL, rtol=0), float((got - want[pad]).abs().max())
    ref.window = None  # every layer full: the window must change real tokens' states
    assert float((got - ref.forward(ids, {1, 2}, 1.0)[0][pad]).abs().max()) > 1e-2
