"""Engine behaviour: layer selection, strategies, batching, overflow, errors (CPU, offline)."""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BloomConfig, BloomForCausalLM

from kvemb_rag import STRATEGIES, KVEmbedder, LayerSelectionConfig, select_window, twonn_dimension
from kvemb_rag.engine.calibration import default_calibration_texts
from kvemb_rag.engine.chunking import combine_chunk_vectors
from kvemb_rag.engine.config import COMPRESSION_DOCUMENT_TEMPLATE
from kvemb_rag.engine.layers import middle_window
from kvemb_rag.errors import ConfigError, UnsupportedModelError
from tests.foreign_models import save_foreign
from tests.tiny_models import build, word_tokenizer

SENTENCES = [
    "Lily went to the park with her mom.",
    "The dog ran fast to catch the red ball.",
    "Tom was sad because his toy was broken.",
    "Once upon a time there was a little bird.",
    "The sun was warm and the sky was blue.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kvemb-cache"))


ID_RULE = LayerSelectionConfig(rule="intrinsic-dimension")


@pytest.fixture(scope="module")
def stories(cache_dir: str, tiny_model_path: Path) -> KVEmbedder:
    """The trained tiny model with the paper's intrinsic-dimension rule (exercises calibration and its cache)."""
    return KVEmbedder(str(tiny_model_path), cache_dir=cache_dir, device="cpu", selection=ID_RULE)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen3", tmp_path_factory.mktemp("qwen3"))


# ------------------------------------------------------------------------------ TwoNN and the rule
@pytest.mark.parametrize("true_dim", [2, 5, 10])
def test_twonn_recovers_known_dimension(true_dim: int) -> None:
    rng = np.random.default_rng(true_dim)
    latent = rng.normal(size=(2000, true_dim))  # no boundary, unlike a cube, where TwoNN underestimates
    embedding = rng.normal(size=(true_dim, 64))  # linear embedding into 64-D keeps the dimension
    estimate = twonn_dimension(latent @ embedding)
    assert abs(estimate - true_dim) / true_dim < 0.10, estimate


def test_twonn_on_a_curved_manifold() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 4 * np.pi, 3000)
    h = rng.uniform(0, 5, 3000)
    swiss_roll = np.stack([t * np.cos(t), h, t * np.sin(t)], axis=1)  # a 2-D surface in 3-D
    assert abs(twonn_dimension(swiss_roll) - 2) / 2 < 0.10


def test_twonn_guards_duplicates() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    with_duplicates = np.concatenate([x, x[:200]])
    assert twonn_dimension(with_duplicates) == pytest.approx(twonn_dimension(x))
    assert math.isnan(twonn_dimension(np.ones((10, 4))))


def test_window_ignores_a_minimum_in_the_first_20_percent() -> None:
    curve = [1.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0, 3.0, 9.0, 9.0]  # L=10: layers 0, 1 excluded
    assert select_window(curve) == (7, 8)  # l* = 7, window floor(0.1 * 10) = 1 more


def test_window_is_capped_at_the_last_layer() -> None:
    curve = [9.0] * 31 + [1.0]  # L=32: minimum at the very end
    assert select_window(curve) == (31,)
    curve = [9.0] * 30 + [1.0, 5.0]
    assert select_window(curve) == (30, 31)


@pytest.mark.parametrize("num_layers,expected_width", [(32, 4), (36, 4), (28, 3), (5, 1)])
def test_window_width(num_layers: int, expected_width: int) -> None:
    curve = [10.0] * num_layers
    curve[num_layers // 2] = 1.0
    chosen = select_window(curve)
    assert chosen[0] == num_layers // 2 and len(chosen) == expected_width


def test_window_skips_nan_and_rejects_all_nan() -> None:
    assert select_window([math.nan, 5.0, math.nan, 4.0, 6.0]) == (3,)
    with pytest.raises(ValueError, match="calibration_texts"):
        select_window([1.0, math.nan, math.nan, math.nan, math.nan])


def test_selection_rule_is_configurable() -> None:
    curve = [1.0, 5.0, 4.0, 3.0, 2.0, 6.0, 7.0, 8.0, 9.0, 9.5]
    assert select_window(curve, LayerSelectionConfig(skip_fraction=0.0, window_fraction=0.2)) == (0, 1, 2)


def test_default_calibration_texts_are_deterministic_and_varied() -> None:
    texts = default_calibration_texts()
    assert len(texts) == 1000 and len(set(texts)) == 1000
    assert texts == default_calibration_texts()
    assert all(t.strip() for t in texts)


# ------------------------------------------------------------------------------ auto layers + cache
def test_auto_layers_on_the_trained_model(stories: KVEmbedder) -> None:
    assert stories.id_curve is not None and len(stories.id_curve) == 5
    assert math.isnan(stories.id_curve[0])  # every prompted text ends with the same token at the embedding layer
    assert stories.layers == select_window(stories.id_curve)
    assert len(stories.layers) == 1 and stories.layers[0] >= 1


def test_layer_cache_is_hit_on_reuse(stories: KVEmbedder, cache_dir: str, tiny_model_path: Path) -> None:
    files = list((Path(cache_dir) / "layers").glob("*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["layers"] == list(stories.layers)
    mtime = files[0].stat().st_mtime_ns
    again = stories.select_layers()
    assert again.from_cache and again.layers == stories.layers
    assert KVEmbedder(str(tiny_model_path), cache_dir=cache_dir, selection=ID_RULE).layers == stories.layers
    assert files[0].stat().st_mtime_ns == mtime  # not recomputed
    # The position of the middle rule does not enter the ID cache key.
    moved = LayerSelectionConfig(rule="intrinsic-dimension", position=0.9)
    assert KVEmbedder(str(tiny_model_path), cache_dir=cache_dir, selection=moved).layers == stories.layers
    assert len(list((Path(cache_dir) / "layers").glob("*.json"))) == 1


@pytest.mark.parametrize(
    ("num_layers", "expected"),
    [(5, (2,)), (18, (8, 9)), (30, (13, 14, 15, 16)), (32, (14, 15, 16, 17)), (36, (16, 17, 18, 19))],
)
def test_middle_window(num_layers: int, expected: tuple[int, ...]) -> None:
    assert middle_window(num_layers) == expected
    assert middle_window(num_layers, LayerSelectionConfig(position=0.0))[0] == 0
    assert middle_window(num_layers, LayerSelectionConfig(position=1.0))[-1] == num_layers - 1


def test_default_rule_is_the_middle_window_without_calibration(tmp_path: Path, tiny_model_path: Path) -> None:
    emb = KVEmbedder(str(tiny_model_path), cache_dir=str(tmp_path), device="cpu")
    assert emb.config.selection.rule == "middle"
    assert emb.layers == middle_window(5) == (2,) and emb.id_curve is None
    assert not (tmp_path / "layers").exists()  # no calibration ran
    with pytest.raises(ValueError, match="rule='minimum' is not valid.*'middle', 'intrinsic-dimension'"):
        LayerSelectionConfig(rule="minimum")
    with pytest.raises(ValueError, match="position=1.5 must be in"):
        LayerSelectionConfig(position=1.5)


def test_layer_cache_separates_calibration_texts(qwen3_dir: Path, tmp_path: Path) -> None:
    words = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", "fast", "red", "blue", "green", "big", "tree"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(60)]
    emb = KVEmbedder(str(qwen3_dir), calibration_texts=texts, cache_dir=str(tmp_path), selection=ID_RULE)
    assert emb.id_curve is not None and len(emb.id_curve) == 4
    other = KVEmbedder(str(qwen3_dir), calibration_texts=texts[:40], cache_dir=str(tmp_path), selection=ID_RULE)
    assert len(list((tmp_path / "layers").glob("*.json"))) == 2
    assert other.layers == select_window(other.id_curve or [])


def test_cache_dir_env_override(qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVEMB_CACHE_DIR", str(tmp_path / "env-cache"))
    texts = [f"the cat sat on the mat {w}" for w in ["red", "blue", "green", "big", "small", "tree", "house"]]
    # The tiny word tokenizer knows the compression prompt's words, not PromptEOL's.
    KVEmbedder(
        str(qwen3_dir), calibration_texts=texts, selection=ID_RULE, document_template=COMPRESSION_DOCUMENT_TEMPLATE
    )
    assert list((tmp_path / "env-cache" / "layers").glob("*.json"))


# ------------------------------------------------------------------------------ encode behaviour
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_encodes(stories: KVEmbedder, strategy: str) -> None:
    emb = stories.with_options(strategy=strategy)
    assert emb.model is stories.model  # one model per process
    vectors = emb.encode(SENTENCES)
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (emb.layers != ()) == (strategy == "kv")
    single = emb.encode(SENTENCES[2])
    assert single.shape == (64,)
    np.testing.assert_allclose(single, vectors[2], atol=1e-5)


def test_order_is_restored_after_length_sorting(stories: KVEmbedder) -> None:
    texts = [*SENTENCES, "A very long story about a cat and a dog who went to the big park together."]
    batched = stories.encode(texts, batch_size=2)
    one_by_one = np.stack([stories.encode(t) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_query_and_document_sides_differ(stories: KVEmbedder) -> None:
    # The default kv templates are the same on both sides (measured best); each side uses its own template.
    sided = stories.with_options(query_template="Question: {text}", document_template="Passage: {text}")
    q = sided.encode_query(SENTENCES[0])
    d = sided.encode_document(SENTENCES[0])
    assert not np.allclose(q, d)
    np.testing.assert_allclose(sided.encode(SENTENCES[0]), d)  # prompt=None is the document side
    np.testing.assert_allclose(
        sided.encode_document(SENTENCES[0]),
        stories.with_options(document_template="Passage: {text}").encode_document(SENTENCES[0]),
        atol=1e-6,
    )


def test_unnormalised_output(stories: KVEmbedder) -> None:
    raw = stories.encode(SENTENCES, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), stories.encode(SENTENCES), atol=1e-5)


def test_echo_pools_over_the_second_copy(stories: KVEmbedder) -> None:
    echo = stories.with_options(strategy="echo")
    text = "The dog ran fast."
    (tokens,) = echo.tokenize([text], "document")
    mask = tokens.pool_mask
    assert mask is not None
    pooled = [i for i, m in zip(tokens.ids, mask, strict=True) if m]
    first_copy = echo.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(pooled) == len(first_copy) and sum(mask) < len(tokens.ids) / 2
    assert echo.tokenizer.decode(pooled).strip() == text


def test_identity_describes_the_vectors(stories: KVEmbedder) -> None:
    ident = stories.identity
    assert ident["strategy"] == "kv" and ident["layers"] == list(stories.layers)
    assert ident["weights"].startswith("sha256:") and ident["max_length"] == 512
    assert ident["pooling"] == "hybrid" and ident["dtype"] == str(stories.dtype).removeprefix("torch.")
    json.dumps(ident)
    assert stories.with_options(strategy="mean").identity["bias"] is None


def test_pooling_can_be_chosen(stories: KVEmbedder) -> None:
    from kvemb_rag.store import embedder_from_identity

    plain = stories.with_options(strategy="kv-ablation", centring=False)  # pooling alone (centring: test_centring)
    text = SENTENCES[0]
    ids = plain.tokenizer(plain.format(text))["input_ids"]
    with torch.inference_mode():
        hidden = plain.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()  # (T, H)
    last, mean = hidden[-1], hidden.mean(dim=0)  # (H,), (H,)
    for pooling, expected in (("last", last), ("mean", mean), ("hybrid", (last + mean) / 2)):
        chosen = plain.with_options(pooling=pooling)
        np.testing.assert_allclose(chosen.encode(text), (expected / expected.norm()).numpy(), atol=1e-5)
        assert chosen.identity["pooling"] == pooling
        assert embedder_from_identity(chosen.identity).identity == chosen.identity
    with pytest.raises(ValueError, match="pooling='max' is not valid.*'hybrid', 'last', 'mean'"):
        plain.with_options(pooling="max")
    with pytest.raises(ValueError, match="'echo' pools over the text's second copy.*leave pooling unset"):
        plain.with_options(strategy="echo", pooling="last")


# ------------------------------------------------------------------------------ long inputs
LONG = " ".join(SENTENCES * 12)  # ~700 tokens with the template: over stories260K's 512


def test_overflow_error_names_the_text(stories: KVEmbedder) -> None:
    with pytest.raises(ValueError, match=r"#1 \(\d+ tokens\).*overflow='chunk'"):
        stories.encode(["short", LONG], overflow="error")


def test_overflow_chunk_is_the_weighted_mean_of_chunks(stories: KVEmbedder) -> None:
    chunks = stories.chunk(LONG)
    assert len(chunks) >= 2 and all(c.n_tokens <= stories.max_length for c in chunks)
    # No overlap by default: the spans tile the text in order, from 0 to its end, without gap or overlap.
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.start for c in chunks] == [0] + [c.end for c in chunks[:-1]]
    assert chunks[-1].end == len(LONG)
    assert all(c.text == LONG[c.start : c.end] for c in chunks)
    per_chunk = stories.encode_document([c.text for c in chunks])
    expected = combine_chunk_vectors(per_chunk, [c.n_tokens for c in chunks])
    np.testing.assert_allclose(stories.encode_document(LONG), expected, atol=1e-5)


def test_overflow_truncate_embeds_the_first_chunk(stories: KVEmbedder) -> None:
    first = stories.chunk(LONG)[0]
    np.testing.assert_allclose(
        stories.encode_document(LONG, overflow="truncate"), stories.encode_document(first.text), atol=1e-5
    )


def test_max_length_cannot_exceed_the_context(cache_dir: str, tiny_model_path: Path) -> None:
    with pytest.raises(ValueError, match="max_length=4096 exceeds the context size.*512"):
        KVEmbedder(str(tiny_model_path), max_length=4096, cache_dir=cache_dir)


# ------------------------------------------------------------------------------ bad input
def test_empty_list(stories: KVEmbedder) -> None:
    out = stories.encode([])
    assert out.shape == (0, 64) and out.dtype == np.float32


def test_non_string_item(stories: KVEmbedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        stories.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="str or a sequence"):
        stories.encode(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_and_whitespace_strings(stories: KVEmbedder, strategy: str) -> None:
    emb = stories.with_options(strategy=strategy)
    with pytest.raises(ValueError, match=r"indices \[1, 2\] are empty or whitespace-only"):
        emb.encode(["fine", "", " \n\t"])


def test_bad_options(stories: KVEmbedder) -> None:
    with pytest.raises(ConfigError, match="prompt_name='passage'.*'query', 'document'"):
        stories.encode("x", prompt_name="passage")
    with pytest.raises(ValueError, match="overflow='drop'.*'chunk'"):
        stories.encode("x", overflow="drop")
    with pytest.raises(ValueError, match="strategy='cls'.*'kv'.*'echo'"):
        stories.with_options(strategy="cls")
    with pytest.raises(ValueError, match=r"layers=\[7\].*valid indices 0..4"):
        stories.with_options(layers=[7])
    with pytest.raises(ValueError, match="contains '\\{text\\}' 0 time"):
        stories.with_options(query_template="Query: no placeholder")
    with pytest.raises(TypeError, match="unknown settings"):
        stories.with_options(temperature=0.7)


def test_prompt_is_a_deprecated_name_of_prompt_name(stories: KVEmbedder) -> None:
    with pytest.warns(DeprecationWarning, match=r"encode\(prompt=\.\.\.\) is deprecated.*prompt_name="):
        old = stories.encode("a query", prompt="query")
    np.testing.assert_array_equal(old, stories.encode("a query", prompt_name="query"))
    with pytest.raises(ConfigError, match="give prompt_name only"):
        stories.encode("x", prompt="query", prompt_name="document")


def test_settings_are_listed_once() -> None:
    """KVEmbedder's keywords, the identity and the Chroma configuration all come from EmbedderConfig."""
    from kvemb_rag.embedding_function import KVEmbeddingFunction
    from kvemb_rag.engine.config import RUNTIME_ARGUMENTS, SETTINGS, STORED_SETTINGS, setting_defaults
    from kvemb_rag.engine.identity import IDENTITY_SETTINGS

    keywords = dict(inspect.signature(KVEmbedder.__init__).parameters)
    keywords.pop("self")
    assert set(keywords) == set(SETTINGS) | set(RUNTIME_ARGUMENTS)
    defaults = setting_defaults()
    for name, default in defaults.items():
        expected = None if name == "selection" else default  # None means LayerSelectionConfig()
        assert keywords[name].default == expected, name
    assert set(IDENTITY_SETTINGS) < set(SETTINGS) and "model" in IDENTITY_SETTINGS
    assert list(KVEmbeddingFunction("any/model").get_config()) == list(STORED_SETTINGS)
    assert {"trust_remote_code", "cache_dir"}.isdisjoint(STORED_SETTINGS)


def test_missing_local_path() -> None:
    with pytest.raises(FileNotFoundError, match=r"does-not-exist' does not exist\. Give an existing folder or \.gguf"):
        KVEmbedder("./models/does-not-exist")


def test_unreachable_hub_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="no-such-org/no-such-model.*HF_HUB_OFFLINE=1"):
        KVEmbedder("no-such-org/no-such-model")


def test_encoder_model_is_refused(tmp_path: Path) -> None:
    BertModel(
        BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model, which is not a decoder-only"):
        KVEmbedder(str(tmp_path))


def _save_unverified(tmp_path: Path, config: object, cls: type) -> str:
    cls(config).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    return str(tmp_path)


def test_unverified_type_needs_the_opt_in(tmp_path: Path) -> None:
    path = _save_unverified(tmp_path, BloomConfig(vocab_size=96, hidden_size=32, n_layer=2, n_head=4), BloomForCausalLM)
    with pytest.raises(ValueError, match="'bloom'.*allow_unverified_architecture=True"):
        KVEmbedder(path, layers=[1])


def test_census_refuses_layers_that_bypass_the_registry(tmp_path: Path) -> None:
    """A model whose layers compute attention themselves: the engine refuses rather than embed un-routed."""
    path = save_foreign("own_attention", tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"did not reach layers \[1\]"):
        KVEmbedder(path, layers=[1], allow_unverified_architecture=True)


def test_architecture_with_its_own_attention_table(tmp_path: Path) -> None:
    """A model that picks attention classes from its own table cannot load with our implementation."""
    path = save_foreign("own_table", tmp_path)
    with pytest.raises(ValueError, match="own table instead of transformers' attention registry"):
        KVEmbedder(path, layers=[1], allow_unverified_architecture=True)


def test_device_and_dtype_defaults(stories: KVEmbedder) -> None:
    assert os.environ["KVEMB_DTYPE"] == "float32"  # the suite's default (tests/__init__.py)
    assert stories.device == torch.device("cpu") and stories.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype='float8'"):
        stories.with_options(dtype="float8")


def test_tokenizer_padding_side_is_explicit(stories: KVEmbedder) -> None:
    assert stories.tokenizer.padding_side == "right" and stories.tokenizer.pad_token_id is not None


def test_validate_settings_without_loading() -> None:
    """The adapters' construction-time check: KVEmbedder settings, every problem a ValueError."""
    from kvemb_rag.engine.config import validate_settings

    config = validate_settings("any/model", layers=[3, 1], max_length=None, device="cuda", dtype="bfloat16")
    assert config.layers == (1, 3)
    assert config.max_length is None  # None means the default
    with pytest.raises(ValueError, match=r"Unknown KVEmbedder settings \['batchsize'\]; valid: .*'batch_size'"):
        validate_settings("any/model", batchsize=8)
    with pytest.raises(ConfigError, match="every layer index must be an int"):
        validate_settings("any/model", layers=["3"])
    with pytest.raises(ValueError, match="max_padding=2"):
        validate_settings("any/model", max_padding=2)
