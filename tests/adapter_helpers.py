"""What the LangChain and LlamaIndex adapter test suites share (integrations/*/tests).

Each integration is its own distribution with its own tests folder; both conftests put the repository root
on ``sys.path`` and import this module, so the set-up (a private layer cache, asyncio marking), the tiny
model and the checks both adapters need live in one place.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Generator, Iterator
from typing import Any

import pluggy
import pytest

from kvemb_rag.engine import loader
from tests.conftest import SIDED_TEMPLATES, TINY_MODEL_DIR, shared_path

# Both adapters' settings for the tiny model, beside its path (the field name differs: model / model_name).
ADAPTER_SETTINGS: dict[str, Any] = {"max_length": 512, "layers": [3], **SIDED_TEMPLATES}

# Settings both adapters refuse at construction, and what the error must name: the field, what is valid and
# what was given.
INVALID_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"strategy": "bm25"}, r"(?s)strategy\n.*'kv', 'kv-ablation'.*input_value='bm25'"),
    ({"dtype": "int8"}, r"dtype='int8' is not valid; choose one of: 'float32', 'bfloat16', 'float16'"),
    ({"max_length": 4}, r"max_length=4 must be an int >= 8"),
    ({"layers": "middle"}, r"(?s)layers.*'auto'.*input_value='middle'"),
    ({"layers": [-1]}, r"layers=\[-1\]: indices must be distinct and >= 0"),
    ({"query_template": "no placeholder"}, r"query_template='no placeholder' contains '\{text\}' 0 time\(s\)"),
    (
        {"document_template": "{text} and {other}"},
        r"document_template='\{text\} and \{other\}' has a placeholder other than '\{text\}'",
    ),
]
BLANK_MODEL = r"model='  ': give a hub name"  # what a blank model name is refused with, whatever its field


def tiny_model() -> str:
    """Path of the tiny trained model; skips the calling test or fixture when ../shared is missing."""
    return str(shared_path(TINY_MODEL_DIR))


def record_model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the engine's model loader (the real load still happens): each load appends the model name."""
    calls: list[str] = []
    real = loader.load_model

    def spy(name: str, **kwargs: Any) -> loader.LoadedModel:
        calls.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(loader, "load_model", spy)
    monkeypatch.setattr("kvemb_rag.engine.embedder.load_model", spy)
    return calls


def record_engine_threads(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the engine's ``encode_document`` and ``encode_query``: each call appends the id of its thread."""
    threads: list[int] = []
    for name in ("encode_document", "encode_query"):
        real = getattr(engine, name)

        def spy(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            threads.append(threading.get_ident())
            return _real(*args, **kwargs)

        monkeypatch.setattr(engine, name, spy)
    return threads


@pytest.fixture(scope="session", autouse=True)
def _private_kvemb_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep layer selections out of ~/.cache: every test here writes into a session temp directory."""
    patch = pytest.MonkeyPatch()
    patch.setenv("KVEMB_CACHE_DIR", str(tmp_path_factory.mktemp("kvemb-cache")))
    yield
    patch.undo()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, pluggy.Result[object], None]:
    """Mark coroutine tests of the adapter suites for pytest-asyncio.

    The async tests (LangChain's standard suites among them) expect pytest-asyncio's auto mode, set in each
    adapter's pyproject. Run from the repository root, the root configuration applies instead, and its strict
    mode would skip them; marking them here (innermost wrapper, so before pytest-asyncio turns marked
    coroutines into its own items) makes both invocations run the same tests.
    """
    outcome = yield
    result = outcome.get_result()
    items = result if isinstance(result, list) else [result]
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and inspect.iscoroutinefunction(item.obj)
            and item.get_closest_marker("asyncio") is None
        ):
            item.add_marker(pytest.mark.asyncio)
