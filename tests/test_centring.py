"""Centring (kvemb_rag.engine.centring): the engine against a plain reference, its cache, identity and stored config.

The reference is written here from the definition (docs/method.md, "Centring"): the mean ``mu`` of the
uncentred unit vectors of the fixed calibration texts, then ``unit(unit(v) - mu)`` for every pooled vector,
chunk by chunk for long texts. The uncentred vectors themselves are checked against plain tensor ops in
tests/test_engine_reference.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvemb_rag import KVEmbedder
from kvemb_rag.embedding_function import KVEmbeddingFunction
from kvemb_rag.engine.calibration import default_calibration_texts
from kvemb_rag.engine.centring import CENTRING_SEED, CENTRING_TEXTS, centring_recipe
from kvemb_rag.engine.chunking import combine_chunk_vectors
from kvemb_rag.errors import ConfigError
from tests.tiny_models import ARCHITECTURES, build

TEXTS = [
    "a cat sat on the mat",
    "dogs run in the park and chase a red ball all day long",
    "rain",
    "the old harbour is quiet in winter, and the boats stay in",
]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _mean(plain: KVEmbedder) -> np.ndarray:
    return plain.encode_document(default_calibration_texts(CENTRING_TEXTS, seed=CENTRING_SEED)).mean(axis=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("centring-cache"))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_centred_vectors_match_the_reference(arch: str, tmp_path: Path, cache_dir: str) -> None:
    centred = KVEmbedder(str(build(arch, tmp_path / arch)), centring=True, cache_dir=cache_dir, batch_size=3)
    plain = centred.with_options(centring=False)
    mu = _mean(plain)  # (H,)
    for side in ("query", "document"):
        expected = _unit(plain.encode(TEXTS, prompt_name=side) - mu)  # (n, H); the batch has padding
        np.testing.assert_allclose(centred.encode(TEXTS, prompt_name=side), expected, atol=1e-5)
    raw = centred.encode(TEXTS, normalize=False)
    np.testing.assert_allclose(raw, plain.encode(TEXTS) - mu, atol=1e-5)  # unit(v) - mu, not re-normalised


def test_long_texts_are_centred_chunk_by_chunk(tiny_model_path: Path, cache_dir: str) -> None:
    centred = KVEmbedder(str(tiny_model_path), centring=True, cache_dir=cache_dir, max_length=64)
    plain = centred.with_options(centring=False)
    long = " ".join(TEXTS * 8)
    chunks = centred.chunk(long)
    assert len(chunks) >= 2
    per_chunk = _unit(plain.encode_document([c.text for c in chunks]) - _mean(plain))  # (C, H)
    expected = combine_chunk_vectors(per_chunk, [c.n_tokens for c in chunks])
    np.testing.assert_allclose(centred.encode_document(long), expected, atol=1e-5)


def test_centring_spreads_unrelated_texts(tiny_model_path: Path, cache_dir: str) -> None:
    centred = KVEmbedder(str(tiny_model_path), centring=True, cache_dir=cache_dir)
    plain = centred.with_options(centring=False)
    off_diagonal = ~np.eye(len(TEXTS), dtype=bool)
    before = (plain.encode(TEXTS) @ plain.encode(TEXTS).T)[off_diagonal]
    after = (centred.encode(TEXTS) @ centred.encode(TEXTS).T)[off_diagonal]
    assert after.mean() < before.mean() - 0.1, (before.mean(), after.mean())


def test_the_mean_is_cached_and_a_bad_cache_is_recomputed(
    tiny_model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = KVEmbedder(str(tiny_model_path), centring=True, cache_dir=str(tmp_path))
    vectors = first.encode(TEXTS)
    [cached] = (tmp_path / "centring").glob("*.npy")
    assert np.load(cached).shape == (first.dim,)
    np.save(cached, np.full(first.dim, 9.0, dtype=np.float32))  # a stale mean is what the next engine reads
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_allclose,
        KVEmbedder(str(tiny_model_path), centring=True, cache_dir=str(tmp_path)).encode(TEXTS),
        vectors,
        atol=1e-5,
    )
    cached.write_bytes(b"not a numpy file")
    with caplog.at_level("WARNING"):
        again = KVEmbedder(str(tiny_model_path), centring=True, cache_dir=str(tmp_path)).encode(TEXTS)
    assert "unreadable centring cache" in caplog.text
    np.testing.assert_allclose(again, vectors, atol=1e-5)


def test_defaults_per_strategy_and_the_identity(tiny_embedder: KVEmbedder) -> None:
    assert tiny_embedder.resolved_config.centring is True  # kv
    assert tiny_embedder.identity["centring"] == centring_recipe()
    ablation = tiny_embedder.with_options(strategy="kv-ablation")
    assert ablation.identity["centring"] == centring_recipe()  # the ablation is kv less the re-routing
    baseline = tiny_embedder.with_options(strategy="prompteol", query_template=None, document_template=None)
    assert baseline.identity["centring"] is None  # the paper's baselines keep their recipes
    assert tiny_embedder.with_options(centring=False).identity["centring"] is None


def test_an_identity_recorded_before_centring_rebuilds_an_uncentred_engine(tiny_embedder: KVEmbedder) -> None:
    old = {k: v for k, v in tiny_embedder.with_options(centring=False).identity.items() if k != "centring"}
    rebuilt = KVEmbedder.from_identity(old)
    assert rebuilt.config.centring is False
    np.testing.assert_allclose(
        rebuilt.encode(TEXTS), tiny_embedder.with_options(centring=False).encode(TEXTS), atol=1e-5
    )


def test_stored_configuration_keeps_centring_and_refuses_a_change(tiny_model_path: Path) -> None:
    function = KVEmbeddingFunction(str(tiny_model_path))
    config = function.get_config()
    assert config["centring"] is True
    before_centring = {k: v for k, v in config.items() if k != "centring"}
    assert KVEmbeddingFunction.build_from_config(before_centring).config.centring is False
    with pytest.raises(ConfigError, match="centring: False -> True"):
        function.validate_config_update(before_centring, config)


@pytest.mark.parametrize("value", ["yes", 1, 0.5])
def test_invalid_centring_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="centring=.*must be True, False or None"):
        KVEmbedder("unused-model", centring=value)  # type: ignore[arg-type]
