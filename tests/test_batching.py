"""Length-sorted batching with a padding budget (`kvemb_rag.engine.batching`) and its use by the engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvemb_rag import KVEmbedder
from kvemb_rag.engine.batching import length_batches

lengths_st = st.lists(st.integers(min_value=1, max_value=4096), max_size=200)


@given(lengths=lengths_st, batch_size=st.integers(1, 64), max_padding=st.floats(0, 1))
def test_batches_partition_sorted_bounded(lengths: list[int], batch_size: int, max_padding: float) -> None:
    batches = length_batches(lengths, batch_size, max_padding)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first, across batches
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        longest = lengths[batch[0]]
        padding = sum(longest - lengths[i] for i in batch)
        assert padding <= max_padding * longest * len(batch) + 1e-9


@given(lengths=lengths_st, batch_size=st.integers(1, 64))
def test_no_budget_gives_fixed_size_batches(lengths: list[int], batch_size: int) -> None:
    """max_padding=1 is sentence-transformers' batching: sorted rows cut every batch_size."""
    sizes = [len(b) for b in length_batches(lengths, batch_size, 1.0)]
    n = len(lengths)
    assert sizes == [min(batch_size, n - start) for start in range(0, n, batch_size)]


@given(lengths=lengths_st, batch_size=st.integers(1, 64), max_padding=st.floats(0.01, 1))
def test_extra_batches_bounded_by_length_bands(lengths: list[int], batch_size: int, max_padding: float) -> None:
    """Batches are only cut early at length bands: at most log(range) / -log(1 - p) extra cuts."""
    batches = length_batches(lengths, batch_size, max_padding)
    if not lengths:
        assert batches == []
        return
    fixed = -(-len(lengths) // batch_size)
    bands = np.log(max(lengths) / min(lengths)) / -np.log1p(-min(max_padding, 1 - 1e-12))
    assert len(batches) <= fixed + np.floor(bands) + 1


def test_ragged_lengths_save_padding() -> None:
    lengths = [450, 436, 389, 370, 342, 320, 310, 287]
    fixed = length_batches(lengths, 8, 1.0)
    banded = length_batches(lengths, 8, 0.1)
    assert fixed == [list(range(8))]
    assert banded == [[0, 1], [2, 3], [4, 5, 6], [7]]  # cut where a row would be > 10% padding

    def positions(batches: list[list[int]]) -> int:
        return sum(len(b) * lengths[b[0]] for b in batches)

    assert positions(fixed) == 3600
    assert positions(banded) == 450 * 2 + 389 * 2 + 342 * 3 + 287  # 2991: 17% fewer than 3600


@pytest.mark.parametrize(
    ("batch_size", "max_padding", "match"),
    [
        (0, 0.1, "batch_size=0 must be >= 1"),
        (4, -0.1, r"max_padding=-0.1 must be a number in \[0, 1\]"),
        (4, 1.5, r"max_padding=1.5 must be a number in \[0, 1\]"),
        (4, float("nan"), r"max_padding=nan must be a number in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_named(batch_size: int, max_padding: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        length_batches([3, 2], batch_size, max_padding)


def test_zero_length_rows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Rows \[1\] have no tokens"):
        length_batches([3, 0, 2], 4, 0.1)


@pytest.mark.parametrize("bad", [-0.5, 2, float("inf"), True, "0.1"])
def test_embedder_refuses_bad_max_padding(tiny_embedder: KVEmbedder, bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_padding=.* must be a number in \[0, 1\].*1.0 = fixed-size batches"):
        tiny_embedder.with_options(max_padding=bad)


def test_padding_budget_keeps_vectors(tiny_embedder: KVEmbedder) -> None:
    """Banded and fixed-size batching give the same vectors, in the input order."""
    texts = ["a cat", "the little dog ran to the big red ball and sat down", "sun", "Tim and Sue played all day long"]
    banded = tiny_embedder.with_options(max_padding=0.0).encode(texts, batch_size=4)
    fixed = tiny_embedder.with_options(max_padding=1.0).encode(texts, batch_size=4)
    one_by_one = np.stack([tiny_embedder.encode(t) for t in texts])
    np.testing.assert_allclose(banded, one_by_one, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fixed, one_by_one, atol=1e-5, rtol=0)
