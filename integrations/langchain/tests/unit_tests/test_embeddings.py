"""LangChain's standard unit tests for KVEmbeddings, plus construction and validation checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_kvemb import KVEmbeddings
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from kvemb_rag.engine.config import SETTINGS
from tests.adapter_helpers import ADAPTER_SETTINGS, BLANK_MODEL, INVALID_SETTINGS, record_model_loads
from tests.conftest import TINY_MODEL as _TINY_MODEL

# Unit tests only construct adapters (lazy: nothing is loaded), so they name the model without needing it.
TINY_MODEL = str(_TINY_MODEL)


class TestKVEmbeddingsStandard(EmbeddingsUnitTests):
    embeddings_class = KVEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": TINY_MODEL, **ADAPTER_SETTINGS}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # The model comes from $KVEMB_MODEL when it is not given (the notebooks and Makefile rely on it).
        return {"KVEMB_MODEL": TINY_MODEL}, {"max_length": 512}, {"model": TINY_MODEL, "max_length": 512}


def test_import_loads_no_torch() -> None:
    """Importing the package (and constructing nothing) leaves torch unloaded: it loads with an engine."""
    code = "import sys, langchain_kvemb; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_construction_is_lazy_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = record_model_loads(monkeypatch)
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
    assert KVEmbeddings().model == "gemma-3-270m"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        *INVALID_SETTINGS,
        ({"batch_size": 0}, r"batch_size=0 must be an int >= 1\.( |$)"),
        ({"model": "  "}, BLANK_MODEL),
        # extra="forbid": a typo is an error, not a silent default
        ({"model_name": "x"}, r"(?s)model_name\n.*Extra inputs are not permitted.*input_value='x'"),
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

    assert sorted(langchain_kvemb.__all__) == ["DEFAULT_MODEL", "KVEmbeddings", "KVRetriever", "__version__"]
    assert langchain_kvemb.__version__ == "0.1.0"
    assert (Path(langchain_kvemb.__file__).parent / "py.typed").is_file()
