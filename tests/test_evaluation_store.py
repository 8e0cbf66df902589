"""Retrieval scored as users get it: a BEIR folder indexed into a real temporary store, searched per mode.

The tiny real model and a real on-disk Chroma database; the corpus is written here, small enough to index in
seconds. Each query shares a rare word with exactly one document, so lexical search ranks it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kvemb_rag.errors import ConfigError
from kvemb_rag.evaluation import RetrievalData, evaluate_store_retrieval, load_beir, minilm_path, run_evaluation
from kvemb_rag.evaluation.encoders import kv_embedder
from kvemb_rag.evaluation.store_search import check_search_modes, store_metric
from kvemb_rag.store import SEARCH_MODES, KVStore

if TYPE_CHECKING:
    from kvemb_rag import KVEmbedder

METRICS = ("ndcg@10", "recall@100", "mrr@10")
# The store's error for an unknown mode lists the valid ones.
BAD_MODE = "Search mode 'fuzzy' is not valid; choose one of hybrid, dense, lexical"
# Fast engine settings for the tiny model: fixed layers (no calibration), CPU.
ENGINE = {"device": "cpu", "layers": [1, 2]}

_FILLER = "The river flows past green hills and quiet farms while children play near the old mill."
DOCUMENTS = {
    "d1": ("Harbour", "The lighthouse keeper polished the brass lamp every evening."),
    "d2": ("Music", "A jazz band played the saxophone late into the night."),
    "d3": ("Mountain", "The volcano eruption covered the village in grey ash."),
    "d4": ("Paper", "She folded origami cranes from coloured squares."),
    # Long: several chunks at chunk_size=64; its rare word is in the last one only.
    "d5": ("Walk", " ".join([_FILLER] * 8) + " At the end we met a quokka."),
    "d6": ("Kitchen", "Fresh bread cooled on the table beside a bowl of soup."),
}
QUERIES = {
    "q1": ("lighthouse keeper", "d1"),
    "q2": ("saxophone", "d2"),
    "q3": ("volcano eruption", "d3"),
    "q4": ("origami cranes", "d4"),
    "q5": ("quokka", "d5"),
}


def write_beir(folder: Path) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) of :data:`DOCUMENTS` and :data:`QUERIES`."""
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": d, "title": title, "text": text} for d, (title, text) in DOCUMENTS.items()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus), encoding="utf-8")
    queries = [{"_id": q, "text": text} for q, (text, _) in QUERIES.items()]
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    rows = "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("store-eval") / "rare")


def test_store_retrieval_scores_every_mode_on_one_index(
    beir: Path, tiny_embedder: KVEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexed: list[int] = []
    add_documents = KVStore.add_documents

    def counted(self: KVStore, documents: Any, **kwargs: Any) -> Any:
        docs = list(documents)
        indexed.append(len(docs))
        return add_documents(self, docs, **kwargs)

    monkeypatch.setattr(KVStore, "add_documents", counted)  # the real method, counted
    scores = evaluate_store_retrieval(tiny_embedder, load_beir(beir), ["lexical", "dense", "hybrid"], chunk_size=64)
    assert indexed == [len(DOCUMENTS)]  # one index for the three modes
    assert list(scores) == [store_metric(m, mode) for mode in ("lexical", "dense", "hybrid") for m in METRICS]
    assert list(scores)[:3] == ["ndcg@10/lexical", "recall@100/lexical", "mrr@10/lexical"]
    # Each query's rare word is in one document only (for q5, in the last chunk of a long one): first place.
    assert scores["ndcg@10/lexical"] == 1.0
    assert scores["mrr@10/lexical"] == 1.0 and scores["recall@100/lexical"] == 1.0
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert scores["recall@100/dense"] == 1.0  # every document is retrieved: the corpus is smaller than k


def test_store_retrieval_ignores_identical_ids(tiny_embedder: KVEmbedder) -> None:
    data = RetrievalData(
        "self",
        corpus={"a": "The lighthouse keeper slept.", "b": "A tall lighthouse in the fog."},
        queries={"a": "lighthouse keeper"},
        qrels={"a": {"b": 1}},
    )
    kept = evaluate_store_retrieval(tiny_embedder, data, ["lexical"])
    dropped = evaluate_store_retrieval(tiny_embedder, data, ["lexical"], ignore_identical_ids=True)
    assert kept["mrr@10/lexical"] == 0.5  # document "a" (both words) ranks above "b"
    assert dropped["mrr@10/lexical"] == 1.0  # the query's own id is dropped


def test_run_evaluation_search_modes_records(beir: Path, tiny_model_path: Path) -> None:
    searched = run_evaluation(
        [str(tiny_model_path)],
        ["kv"],
        retrieval=[beir],
        search_modes=["lexical", "hybrid", "lexical"],  # repeats are searched once
        chunk_size=64,
        engine_kwargs=ENGINE,
        progress=False,
    )
    assert [(r.strategy, r.task, r.dataset, r.metric) for r in searched] == [
        ("kv", "retrieval", "rare", f"{metric}/{mode}") for mode in ("lexical", "hybrid") for metric in METRICS
    ]
    got = {r.metric: r.value for r in searched}
    assert got["ndcg@10/lexical"] == 1.0
    plain = run_evaluation([str(tiny_model_path)], ["kv"], retrieval=[beir], engine_kwargs=ENGINE, progress=False)
    assert [(r.task, r.dataset, r.metric) for r in plain] == [("retrieval", "rare", metric) for metric in METRICS]


def test_search_modes_are_checked_before_any_model_loads(beir: Path, tmp_path: Path) -> None:
    sts = tmp_path / "pairs.tsv"
    sts.write_text("4.5\tA cat sat.\tA cat sits.\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=BAD_MODE):
        run_evaluation(["some/model"], ["kv"], retrieval=[beir], search_modes=["dense", "fuzzy"], progress=False)
    with pytest.raises(ConfigError, match="retrieval datasets only"):
        run_evaluation(["some/model"], ["kv"], sts=[sts], search_modes=["dense"], progress=False)
    with pytest.raises(ConfigError, match="chunk_size applies to store search only"):
        run_evaluation(["some/model"], ["kv"], retrieval=[beir], chunk_size=64, progress=False)
    with pytest.raises(ConfigError, match="got the string 'dense'"):
        check_search_modes("dense")
    assert check_search_modes(["hybrid", "dense", "hybrid"]) == ("hybrid", "dense")
    assert check_search_modes(SEARCH_MODES) == SEARCH_MODES
    with pytest.raises(ConfigError, match="only KVEmbedder strategies can be indexed"):
        kv_embedder(object())


def test_a_sentence_transformers_model_cannot_be_searched(beir: Path) -> None:
    try:
        model = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    with pytest.raises(ConfigError, match="needs KVEmbedder strategies; .* is a sentence-transformers model"):
        run_evaluation([str(model)], ["kv"], retrieval=[beir], search_modes=["dense"], progress=False)


def test_evaluate_store_retrieval_checks_its_arguments(beir: Path, tiny_embedder: KVEmbedder) -> None:
    data = load_beir(beir)
    with pytest.raises(ConfigError, match=BAD_MODE):
        evaluate_store_retrieval(tiny_embedder, data, ["fuzzy"])
    with pytest.raises(ConfigError, match="no search mode given; choose from hybrid, dense, lexical"):
        evaluate_store_retrieval(tiny_embedder, data, [])
    with pytest.raises(ConfigError, match="k must be an int >= 1"):
        evaluate_store_retrieval(tiny_embedder, data, ["dense"], k=0)
    with pytest.raises(ConfigError, match="chunk_size"):
        evaluate_store_retrieval(tiny_embedder, data, ["dense"], chunk_size=8)
