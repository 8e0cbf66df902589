"""LangChain's standard unit tests for KVEmbeddings, plus construction and validation checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_kvemb import KVEmbeddings
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from kvemb_rag.engine import loader
from kvemb_rag.engine.config import SETTINGS

# integrations/langchain/tests/unit_tests/<this file> -> parents[4] is the repository root.
REPO = Path(__file__).resolve().parents[4]
TINY_MODEL = str(REPO.parent / "shared" / "data" / "models" / "stories260K" / "hf")


class TestKVEmbeddingsStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[KVEmbeddings]:
        return KVEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": TINY_MODEL, "max_length": 512, "layers": [3]}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # The model comes from $KVEMB_MODEL when it is not given (the notebooks and Makefile rely on it).
        return {"KVEMB_MODEL": TINY_MODEL}, {"max_length": 512}, {"model": TINY_MODEL, "max_length": 512}


def test_construction_is_lazy_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = loader.load_model

    def spy(name: str, **kwargs: Any) -> loader.LoadedModel:
        calls.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(loader, "load_model", spy)
    monkeypatch.setattr("kvemb_rag.engine.embedder.load_model", spy)
    # A hub name that cannot be reached here: construction must still succeed, since nothing is fetched.
    KVEmbeddings(model="nobody/not-a-real-model-for-kvemb-tests")
    KVEmbeddings(model=TINY_MODEL, layers=[3])
    assert calls == []


def test_missing_model_fails_on_first_use_with_a_clear_error(tmp_path: Path) -> None:
    embeddings = KVEmbeddings(model=str(tmp_path / "missing-model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embeddings.embed_query("hello")


def test_defaults_and_fields() -> None:
    embeddings = KVEmbeddings(model=TINY_MODEL)
    assert embeddings.strategy == "kv"
    assert embeddings.layers == "auto"
    assert embeddings.batch_size == 16
    assert embeddings.show_progress is False
    # Every engine setting is a field, derived from the engine's one list; show_progress is the adapter's own.
    assert list(KVEmbeddings.model_fields) == [*SETTINGS, "show_progress"]
    assert all(field.description for field in KVEmbeddings.model_fields.values())


def test_model_defaults_to_the_bundled_model_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVEMB_MODEL", raising=False)
    assert KVEmbeddings().model == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "bm25"}, "strategy"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": 4}, "max_length"),
        ({"layers": "middle"}, "layers"),
        ({"layers": [-1]}, "layers"),
        ({"query_template": "no placeholder"}, "query_template"),
        ({"document_template": "{text} and {other}"}, "document_template"),
        ({"model": "  "}, "model"),
        ({"model_name": "x"}, "model_name"),  # extra="forbid": a typo is an error, not a silent default
    ],
)
def test_invalid_settings_are_refused_at_construction(kwargs: dict[str, Any], message: str) -> None:
    params = {"model": TINY_MODEL, **kwargs}
    with pytest.raises(ValidationError, match=message):
        KVEmbeddings(**params)


def test_empty_document_list_needs_no_model(tmp_path: Path) -> None:
    assert KVEmbeddings(model=str(tmp_path / "never-loaded")).embed_documents([]) == []


def test_public_surface() -> None:
    import langchain_kvemb

    assert sorted(langchain_kvemb.__all__) == ["DEFAULT_MODEL", "KVEmbeddings", "__version__"]
    assert langchain_kvemb.__version__ == "0.1.0"
    assert (Path(langchain_kvemb.__file__).parent / "py.typed").is_file()
