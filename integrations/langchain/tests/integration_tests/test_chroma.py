"""End to end with langchain_chroma: index, search, reopen the persisted store, search again."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_kvemb import KVEmbeddings

from tests.adapter_helpers import tiny_model

DOCS = [
    Document(page_content="Tom the cat liked to sleep in the warm sun.", metadata={"topic": "cat"}),
    Document(page_content="The big red boat sailed across the blue sea.", metadata={"topic": "boat"}),
    Document(page_content="Mia baked a cake with her grandma on Sunday.", metadata={"topic": "cake"}),
    Document(page_content="A little bird built a nest high in the old tree.", metadata={"topic": "bird"}),
    Document(page_content="The children played with a ball in the park.", metadata={"topic": "park"}),
]
IDS = [f"doc-{i}" for i in range(len(DOCS))]


@pytest.fixture
def embeddings() -> KVEmbeddings:
    return KVEmbeddings(model=tiny_model(), max_length=512, layers=[3])


def test_chroma_round_trip(tmp_path: Path, embeddings: KVEmbeddings) -> None:
    store_dir = str(tmp_path / "chroma")
    store = Chroma(
        collection_name="stories",
        embedding_function=embeddings,
        persist_directory=store_dir,
        collection_configuration={"hnsw": {"space": "cosine"}},
    )
    assert store.add_documents(DOCS, ids=IDS) == IDS

    question = "Where did the bird build its nest?"
    before = store.similarity_search_with_score(question, k=3)
    assert len(before) == 3
    assert {doc.metadata["topic"] for doc, _ in before} <= {d.metadata["topic"] for d in DOCS}
    # A stored document's own vector finds it first, at (numerically) zero cosine distance.
    own = embeddings.embed_documents([DOCS[3].page_content])[0]
    hit, distance = store.similarity_search_by_vector_with_relevance_scores(own, k=1)[0]
    assert hit.page_content == DOCS[3].page_content
    assert distance == pytest.approx(0.0, abs=1e-4)

    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert len(retriever.invoke(question)) == 2

    # Reopen: a new client and store object on the same directory, with a fresh adapter.
    del store
    reopened = Chroma(
        collection_name="stories",
        embedding_function=KVEmbeddings(model=embeddings.model, max_length=512, layers=[3]),
        persist_directory=store_dir,
    )
    assert reopened._collection.count() == len(DOCS)
    assert reopened._collection.configuration_json["hnsw"]["space"] == "cosine"
    after = reopened.similarity_search_with_score(question, k=3)
    assert [d.page_content for d, _ in after] == [d.page_content for d, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-5)
