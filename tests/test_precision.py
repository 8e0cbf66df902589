"""The compute dtype: bfloat16 where the CPU has it natively, and collections that outlive the machine.

The CPU-feature probe is the only thing replaced here (to play a machine without native bfloat16); the model,
the engine and Chroma are real.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from kvemb_rag import KVEmbedder
from kvemb_rag.engine import precision
from kvemb_rag.errors import ConfigError
from kvemb_rag.store import Document, KVStore

CPU = torch.device("cpu")


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Play a CPU without AMX, AVX512-BF16 or Arm BF16 (and no $KVEMB_DTYPE, which the suite sets)."""
    monkeypatch.delenv("KVEMB_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)
    precision._announce.cache_clear()


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Play a CPU with AVX512-BF16 (and no $KVEMB_DTYPE)."""
    monkeypatch.delenv("KVEMB_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "AVX512-BF16")
    precision._announce.cache_clear()


def test_kvemb_dtype_overrides_the_default(native_bf16: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVEMB_DTYPE", "fp32")
    assert precision.resolve_dtype(None, CPU) == torch.float32
    assert precision.resolve_dtype("bfloat16", CPU) == torch.bfloat16  # an explicit dtype wins
    monkeypatch.setenv("KVEMB_DTYPE", "double")
    with pytest.raises(ConfigError, match=r"\$KVEMB_DTYPE: dtype='double' is not supported.*unset the environment"):
        precision.resolve_dtype(None, CPU)


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 Linux flags")
def test_detection_agrees_with_the_kernels_cpu_flags() -> None:
    flags = {
        f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags") for f in line.split()
    }
    assert (precision.cpu_bf16_feature() is not None) == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_the_default_is_bfloat16_only_where_it_runs_natively(
    native_bf16: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kvemb_rag.engine.precision"):
        assert precision.resolve_dtype(None, CPU) == torch.bfloat16
        assert precision.resolve_dtype(None, CPU) == torch.bfloat16
    assert [r.getMessage() for r in caplog.records if "natively" in r.getMessage()] == [
        "This CPU computes bfloat16 natively (AVX512-BF16): embedding in bfloat16; pass dtype='float32' for full "
        "precision."
    ]  # logged once
    assert precision.resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert precision.resolve_dtype("fp32", CPU) == torch.float32


def test_without_native_bfloat16_the_default_is_float32(no_native_bf16: None) -> None:
    assert precision.resolve_dtype(None, CPU) == torch.float32
    assert not precision.runs_natively(torch.bfloat16, CPU) and precision.runs_natively(torch.float32, CPU)


def test_an_unknown_dtype_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"dtype='int8' is not supported; use one of: float32, bfloat16, float16, fp32"
    ):
        precision.resolve_dtype("int8", CPU)


def test_a_bfloat16_collection_is_used_on_a_machine_without_it(
    tiny_model_path: Path, tmp_path: Path, no_native_bf16: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Built in bfloat16, reopened where bfloat16 is not native: rebuilt in float32, searched, extended."""
    docs = [
        Document(f"d{i}", f"Story number {i} about a {w} who found a {w} in the park.")
        for i, w in enumerate(["cat", "dog", "bird", "fish", "frog"])
    ]
    built = KVEmbedder(str(tiny_model_path), max_length=128, layers=[3], dtype="bfloat16")
    with KVStore(path=tmp_path / "db", embedder=built) as store:
        store.add_documents(docs[:4])
        expected = [h.doc_id for h in store.query("a dog in the park", 4, mode="dense")]
    with caplog.at_level(logging.INFO), KVStore(path=tmp_path / "db") as store:
        engine = store.load_embedder()
        assert engine.dtype == torch.float32 and store.identity is not None
        assert store.identity["dtype"] == "bfloat16"
        hits = store.query("a dog in the park", 4, mode="dense")
        assert [h.doc_id for h in hits] == expected
        assert store.add_documents(docs[4:]).added == 1
        assert store.count() == 5
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "built in bfloat16, which this cpu does not compute natively; embedding in float32" in said
    assert "was built with dtype=bfloat16; this engine computes in float32" in said


def test_float32_and_bfloat16_vectors_agree_to_rounding(tiny_model_path: Path) -> None:
    texts = ["Once upon a time there was a little girl.", "The dog ran to the big tree and barked."]
    fp32 = KVEmbedder(str(tiny_model_path), max_length=128, layers=[3], dtype="float32").encode(texts)
    bf16 = KVEmbedder(str(tiny_model_path), max_length=128, layers=[3], dtype="bfloat16").encode(texts)
    cosines = np.sum(fp32 * bf16, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(fp32, bf16)
