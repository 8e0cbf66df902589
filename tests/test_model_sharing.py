"""One model per process: the LangChain and LlamaIndex adapters and the Chroma function share it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest
from transformers import AutoModel

from kvemb_rag import clear_model_cache
from kvemb_rag.embedding_function import KVEmbeddingFunction
from kvemb_rag.engine.shared import clear_shared_embedders

pytest.importorskip("langchain_kvemb", reason="install integrations/langchain (make install)")
pytest.importorskip("llama_index.embeddings.kvemb", reason="install integrations/llama-index (make install)")

from langchain_kvemb import KVEmbeddings
from llama_index.embeddings.kvemb import KVEmbedding


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch, kvemb_cache_dir: Path) -> Iterator[list[str]]:
    """Start from an empty model cache and record every real ``AutoModel.from_pretrained`` call."""
    monkeypatch.setenv("KVEMB_CACHE_DIR", str(kvemb_cache_dir))
    clear_shared_embedders()
    clear_model_cache()
    calls: list[str] = []
    real = AutoModel.from_pretrained  # bound classmethod: the spy wraps it, the real load still happens

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    yield calls
    clear_shared_embedders()


def test_langchain_llamaindex_and_chroma_load_the_model_once(
    loads: list[str], tiny_model_path: Path, tmp_path: Path
) -> None:
    model = str(tiny_model_path)
    langchain = KVEmbeddings(model=model, max_length=512, layers=[3])
    llama = KVEmbedding(model_name=model, max_length=512, layers=[3])
    chroma_ef = KVEmbeddingFunction(model, max_length=512, layers=[3])
    assert loads == []  # construction loads nothing

    # Use all three, as two pipelines and a store would.
    langchain.embed_documents(["The cat sat on the mat."])
    llama.get_text_embedding_batch(["The dog ran in the park."])
    collection = chromadb.PersistentClient(path=str(tmp_path / "db")).create_collection(
        "shared", embedding_function=chroma_ef  # type: ignore[arg-type]
    )
    collection.add(ids=["a"], documents=["A bird sang in the tree."])
    collection.query(query_texts=["Where did the bird sing?"], n_results=1)

    assert len(loads) == 1
    assert langchain.engine.model is llama.engine.model is chroma_ef.engine.model
    # Same settings: even the engine object is shared (layer selection and start-up check run once).
    assert langchain.engine is llama.engine is chroma_ef.engine


def test_different_strategy_shares_the_model_but_not_the_engine(loads: list[str], tiny_model_path: Path) -> None:
    kv = KVEmbeddings(model=str(tiny_model_path), max_length=512, layers=[3])
    ablation = KVEmbedding(model_name=str(tiny_model_path), max_length=512, strategy="kv-ablation")
    kv.embed_query("hello")
    ablation.get_query_embedding("hello")
    assert len(loads) == 1
    assert kv.engine is not ablation.engine
    assert kv.engine.model is ablation.engine.model


def test_a_different_dtype_is_a_different_model(loads: list[str], tiny_model_path: Path) -> None:
    fp32 = KVEmbeddings(model=str(tiny_model_path), max_length=512, layers=[3], dtype="float32")
    bf16 = KVEmbedding(model_name=str(tiny_model_path), max_length=512, layers=[3], dtype="bfloat16")
    fp32.embed_query("hello")
    bf16.get_query_embedding("hello")
    assert len(loads) == 2
    assert fp32.engine.model is not bf16.engine.model
