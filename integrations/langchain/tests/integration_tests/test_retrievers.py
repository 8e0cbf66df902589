"""KVRetriever on a real KVStore (embedded Chroma, the real tiny model): LangChain's standard suite, and ours."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document as LCDocument
from langchain_kvemb import KVRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from kvemb_rag.engine.shared import shared_embedder
from kvemb_rag.errors import ConfigError
from kvemb_rag.store import DEFAULT_MODE, Document, Fusion, KVStore
from tests.adapter_helpers import ADAPTER_SETTINGS, record_engine_threads, tiny_model

# Short stories, one document each, and one long story that the store splits into several chunks.
STORIES = {
    "cat": ("Tom the cat liked to sleep in the warm sun by the window.", {"topic": "animals"}),
    "boat": ("The big red boat sailed across the blue sea to the island.", {"topic": "sea"}),
    "cake": ("Mia baked a cake with her grandma on Sunday and it was yummy.", {"topic": "food"}),
    "bird": ("A little bird built a nest high in the old tree.", {"topic": "animals", "tags": ["nest", "tree"]}),
    "park": ("The children played with a ball in the park all day.", {"topic": "play"}),
    # The only document with the word "zeppelin": lexical search finds it exactly.
    "zeppelin": ("Ben saw a silver zeppelin float over the town and waved at it.", {"topic": "sky"}),
}
LONG_ID = "lighthouse"
LONG_TEXT = " ".join(
    f"On day {i} Lily climbed the lighthouse by the sea and counted {i} boats before her mom called her home."
    for i in range(40)
)
QUERY = "Where did the little bird build its nest?"
BAD_MODE = r"Search mode 'fuzzy' is not valid; choose one of hybrid, dense, lexical\."


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVStore]:
    """A real on-disk store with the stories, embedded by the shared tiny-model engine."""
    engine = shared_embedder(tiny_model(), **ADAPTER_SETTINGS)  # skips without ../shared
    store = KVStore(tmp_path_factory.mktemp("kvstore") / "db", collection="retriever-tests", embedder=engine)
    documents = [Document(doc_id, text, meta, "stories") for doc_id, (text, meta) in STORIES.items()]
    documents.append(Document(LONG_ID, LONG_TEXT, {"topic": "sea"}, "stories"))
    store.add_documents(documents)
    assert len(store.document_ids()) == len(documents)
    assert store.count() > len(documents)  # the long story has several chunks
    yield store
    store.close()


class TestKVRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _store(self, kv_store: KVStore) -> None:
        self.kv_store = kv_store

    @property
    def retriever_constructor(self) -> type[KVRetriever]:
        return KVRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"store": self.kv_store}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def _summary(docs: list[LCDocument]) -> list[tuple[str | None, str, dict[str, Any]]]:
    return [(d.id, d.page_content, d.metadata) for d in docs]


def test_defaults_are_langchain_and_rag_friendly(kv_store: KVStore) -> None:
    retriever = KVRetriever(store=kv_store)
    assert (retriever.k, retriever.mode, retriever.per_document, retriever.where) == (4, None, True, None)
    docs = retriever.invoke(QUERY)
    assert len(docs) == 4
    assert len({d.metadata["doc_id"] for d in docs}) == 4  # distinct documents
    assert {d.metadata["mode"] for d in docs} == {DEFAULT_MODE}  # None: the store's default
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_same_results_as_the_store(kv_store: KVStore) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        docs = KVRetriever(store=kv_store, k=3, mode=mode).invoke(QUERY)
        hits = kv_store.query(QUERY, 3, per_document=True, mode=mode)
        assert [d.id for d in docs] == [h.id for h in hits], mode
        assert [d.metadata["score"] for d in docs] == pytest.approx([h.score for h in hits]), mode
        assert {d.metadata["mode"] for d in docs} == {mode}


def test_lexical_mode_finds_an_exact_rare_word(kv_store: KVStore) -> None:
    docs = KVRetriever(store=kv_store, mode="lexical").invoke("zeppelin")
    # Lexical search returns only records holding a query term: the one story with that word.
    assert [d.metadata["doc_id"] for d in docs] == ["zeppelin"]
    assert "zeppelin" in docs[0].page_content
    assert docs[0].metadata["mode"] == "lexical"
    # A call can switch the mode too.
    overridden = KVRetriever(store=kv_store, mode="dense").invoke("zeppelin", mode="lexical")
    assert _summary(overridden) == _summary(docs)


def test_metadata_is_carried(kv_store: KVStore) -> None:
    docs = KVRetriever(store=kv_store, k=1, mode="lexical").invoke("nest tree")
    doc = docs[0]
    assert doc.metadata["doc_id"] == "bird"
    text, meta = STORIES["bird"]
    assert doc.page_content == text[doc.metadata["start"] : doc.metadata["end"]]
    assert doc.metadata["topic"] == "animals"
    assert doc.metadata["tags"] == ["nest", "tree"]  # a JSON-encoded value comes back decoded
    assert doc.metadata["source"] == "stories"
    assert doc.metadata["chunk_index"] == 0
    assert doc.id == doc.metadata["id"] and doc.id.startswith("bird::0::")
    assert set(doc.metadata) == {*meta, "doc_id", "source", "chunk_index", "start", "end", "score", "id", "mode"}


def test_per_document_and_where(kv_store: KVStore) -> None:
    question = "lighthouse boats"
    chunks = KVRetriever(store=kv_store, k=3, mode="lexical", per_document=False).invoke(question)
    assert [d.metadata["doc_id"] for d in chunks] == [LONG_ID] * 3  # three chunks of the long story
    assert len({d.metadata["chunk_index"] for d in chunks}) == 3
    for doc in chunks:
        assert doc.page_content == LONG_TEXT[doc.metadata["start"] : doc.metadata["end"]]
    documents = KVRetriever(store=kv_store, k=3, mode="lexical").invoke(question)
    assert len({d.metadata["doc_id"] for d in documents}) == len(documents)  # one chunk per document
    assert documents[0].metadata["doc_id"] == LONG_ID

    sea = KVRetriever(store=kv_store, k=5, where={"topic": "sea"}).invoke(QUERY)
    assert {d.metadata["doc_id"] for d in sea} == {"boat", LONG_ID}
    overridden = KVRetriever(store=kv_store, k=5).invoke(QUERY, where={"topic": "animals"}, per_document=True)
    assert {d.metadata["doc_id"] for d in overridden} == {"cat", "bird"}
    rrf = KVRetriever(store=kv_store, k=2, fusion=Fusion(method="rrf")).invoke(QUERY)
    assert [d.id for d in rrf] == [
        h.id for h in kv_store.query(QUERY, 2, per_document=True, fusion=Fusion(method="rrf"))
    ]


async def test_async_equals_sync_and_leaves_the_event_loop(kv_store: KVStore, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = KVRetriever(store=kv_store, k=3)
    expected = retriever.invoke(QUERY)
    threads = record_engine_threads(kv_store.embedder, monkeypatch)
    got = await retriever.ainvoke(QUERY)
    assert _summary(got) == _summary(expected)
    assert threads and threading.get_ident() not in threads  # the query was embedded in a worker thread
    assert _summary(await retriever.ainvoke("zeppelin", k=1, mode="lexical")) == _summary(
        retriever.invoke("zeppelin", k=1, mode="lexical")
    )


def test_bad_settings_are_refused_with_clear_errors(kv_store: KVStore) -> None:
    with pytest.raises(ValidationError, match=BAD_MODE):
        KVRetriever(store=kv_store, mode="fuzzy")
    with pytest.raises(ValidationError, match=r"k must be an int >= 1; got 0\."):
        KVRetriever(store=kv_store, k=0)
    with pytest.raises(ValidationError, match=r"k must be an int >= 1; got True\."):
        KVRetriever(store=kv_store, k=True)
    with pytest.raises(ValidationError, match=r"store must be a kvemb_rag\.store\.KVStore; got str\."):
        KVRetriever(store="index-dir")
    with pytest.raises(ValidationError, match=r"(?s)fuzion\n  Extra inputs are not permitted"):
        KVRetriever(store=kv_store, fuzion=None)
    retriever = KVRetriever(store=kv_store)
    with pytest.raises(ConfigError, match=BAD_MODE):
        retriever.invoke(QUERY, mode="fuzzy")
    with pytest.raises(ConfigError, match=r"k must be an int >= 1; got -1\."):
        retriever.invoke(QUERY, k=-1)
    with pytest.raises(ConfigError, match=r"per_document must be a bool; got 'no'\."):
        retriever.invoke(QUERY, per_document="no")
    with pytest.raises(TypeError, match=r"unexpected search argument\(s\) \['top_k'\]; a call may set k, mode, "):
        retriever.invoke(QUERY, top_k=2)
    with pytest.raises(ValueError, match=r"The query must be a non-empty string; got '  '\."):
        retriever.invoke("  ")


def test_a_store_without_embedder_searches_lexically(kv_store: KVStore) -> None:
    # A reopened store has no embedder until one is given or loaded: lexical search works without one.
    reopened = KVStore(kv_store.path, collection="retriever-tests")
    try:
        docs = KVRetriever(store=reopened, mode="lexical").invoke("zeppelin")
        assert [d.metadata["doc_id"] for d in docs] == ["zeppelin"]
    finally:
        reopened.close()
