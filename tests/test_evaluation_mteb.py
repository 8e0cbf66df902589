"""The MTEB adapter: mteb 2.x's encoder protocol, and parity of our metrics with mteb's own evaluators.

Nothing is downloaded: tasks get their data injected from ``../shared/data``. Skipped without mteb
(``pip install "kvemb-rag[eval]"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvemb_rag.evaluation import (
    ClassificationProtocol,
    SentenceTransformerEncoder,
    evaluate_retrieval,
    evaluate_sts,
    load_beir,
    load_sts,
    minilm_path,
)
from kvemb_rag.evaluation.mteb import MTEBEncoder
from tests.conftest import shared_path
from tests.recording_encoder import RecordingEncoder

mteb = pytest.importorskip("mteb")


class SideRecorder(RecordingEncoder):
    """An encoder that records which side was asked for; vectors encode the text length."""

    name = "recorder"
    dim = 4

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_adapter_satisfies_mteb_encoder_protocol() -> None:
    from mteb.models import EncoderProtocol, ModelMeta

    model = MTEBEncoder(SideRecorder())
    assert isinstance(model, EncoderProtocol)
    meta = model.mteb_model_meta
    assert isinstance(meta, ModelMeta)
    assert meta.name == "local/recorder" and meta.embed_dim == 4
    assert meta.similarity_fn_name.value == "cosine"


def test_adapter_encodes_an_mteb_shaped_dataloader() -> None:
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    # What mteb passes for a retrieval corpus: dict batches whose "text" holds the title-joined texts.
    rows = [
        {"id": str(i), "text": f"title {i} body text {'x' * i}", "title": f"title {i}", "body": "b"} for i in range(5)
    ]
    loader: DataLoader[dict[str, Any]] = DataLoader(rows, batch_size=2)  # type: ignore[arg-type]
    recorder = SideRecorder()
    model = MTEBEncoder(recorder)
    kwargs = {"task_metadata": mteb.get_task("SciFact").metadata, "hf_split": "test", "hf_subset": "default"}
    queries = model.encode(loader, prompt_type=PromptType.query, batch_size=2, **kwargs)
    documents = model.encode(loader, prompt_type=PromptType.document, **kwargs)
    symmetric = model.encode(loader, **kwargs)
    assert [side for side, _, _ in recorder.calls] == ["query", "document", "document"]
    assert recorder.calls[0][1] == [r["text"] for r in rows]
    assert recorder.calls[0][2] == {"batch_size": 2}
    assert queries.shape == documents.shape == symmetric.shape == (5, 4) and queries.dtype == np.float32
    sim = model.similarity(queries, documents)
    assert tuple(sim.shape) == (5, 5)
    assert np.allclose(np.diag(sim.numpy()), 1.0, atol=1e-6)
    assert np.allclose(model.similarity_pairwise(queries, documents).numpy(), 1.0, atol=1e-6)
    with pytest.raises(TypeError, match="text"):
        model.encode([{"image": [1]}], **kwargs)


def test_kv_embedder_through_the_adapter(tiny_embedder: Any) -> None:
    from mteb.models import EncoderProtocol
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    model = MTEBEncoder(tiny_embedder)
    assert isinstance(model, EncoderProtocol)
    assert model.strategy == "kv" and model.mteb_model_meta.embed_dim == tiny_embedder.dim
    texts = ["Once upon a time there was a cat.", "The dog ran to the park.", "A girl ate cake."]
    loader: DataLoader[dict[str, Any]] = DataLoader([{"text": t} for t in texts], batch_size=2)  # type: ignore[arg-type]
    kwargs = {"task_metadata": mteb.get_task("SciFact").metadata, "hf_split": "test", "hf_subset": "default"}
    queries = model.encode(loader, prompt_type=PromptType.query, **kwargs)
    documents = model.encode(loader, prompt_type=PromptType.document, **kwargs)
    assert np.allclose(queries, tiny_embedder.encode_query(texts), atol=1e-5)
    assert np.allclose(documents, tiny_embedder.encode_document(texts), atol=1e-5)
    assert not np.allclose(queries, documents, atol=1e-3)  # different templates


def test_undersampling_matches_mteb(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import Dataset

    labels = [f"l{i % 7}" for i in range(200)]
    task = mteb.get_task("Banking77Classification")
    ours = ClassificationProtocol().training_subsets(labels)
    dataset = Dataset.from_dict({"text": [str(i) for i in range(200)], "label": labels})
    idxs = None
    for experiment, subset in enumerate(ours):
        _, idxs, selected = task._undersample_data(dataset, experiment, idxs)
        assert selected == subset
    assert task.samples_per_label == 8 and task.n_experiments == 10 and task.seed == 42
    assert task.evaluator_model.get_params()["max_iter"] == 100


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(minilm_path(), device="cpu")


@pytest.mark.slow
def test_mteb_sts_evaluator_agrees_with_ours(minilm: SentenceTransformerEncoder) -> None:
    from datasets import Dataset, DatasetDict

    data = load_sts(shared_path("data/sts/STSBenchmark/sts-test.csv")).head(200)
    task = mteb.get_task("STSBenchmark")
    task.dataset = DatasetDict(
        {"test": Dataset.from_dict({"sentence1": data.sentences1, "sentence2": data.sentences2, "score": data.scores})}
    )
    task.data_loaded = True
    result = mteb.evaluate(MTEBEncoder(minilm), task, cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert scores["cosine_spearman"] == pytest.approx(evaluate_sts(minilm, data)["spearman"], abs=1e-6)


@pytest.mark.slow
def test_mteb_retrieval_evaluator_agrees_with_ours(minilm: SentenceTransformerEncoder, tmp_path: Path) -> None:
    from datasets import Dataset

    scifact = shared_path("data/scifact")
    full = load_beir(scifact)
    qids = list(full.queries)[:40]
    relevant = {d for q in qids for d in full.qrels[q]}
    keep = relevant | set(list(full.corpus)[:400])
    raw = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text().splitlines()]
    corpus = [{"id": r["_id"], "title": r["title"], "text": r["text"]} for r in raw if r["_id"] in keep]
    task = mteb.get_task("SciFact")
    qrels = {q: dict(full.qrels[q]) for q in qids}
    task.dataset = {
        "default": {
            "test": {
                "corpus": Dataset.from_list(corpus),
                "queries": Dataset.from_list([{"id": q, "text": full.queries[q]} for q in qids]),
                "relevant_docs": qrels,
                "top_ranked": None,
            }
        }
    }
    task.data_loaded = True
    result = mteb.evaluate(MTEBEncoder(minilm), task, cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]

    from kvemb_rag.evaluation import RetrievalData

    subset = RetrievalData(
        "scifact", {d["id"]: full.corpus[d["id"]] for d in corpus}, {q: full.queries[q] for q in qids}, qrels
    )
    ours = evaluate_retrieval(minilm, subset)
    assert ours["ndcg@10"] == pytest.approx(scores["ndcg_at_10"], abs=1e-4)
    assert ours["recall@100"] == pytest.approx(scores["recall_at_100"], abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(scores["mrr_at_10"], abs=1e-4)
