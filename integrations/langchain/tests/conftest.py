"""Shared set-up of the langchain-kvemb tests: a private layer-selection cache and asyncio marking."""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterator

import pluggy
import pytest


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
    """Mark coroutine tests of this directory for pytest-asyncio.

    LangChain's standard suites contain ``async def`` tests and expect pytest-asyncio's auto mode (set in
    this package's pyproject). Run from the repository root, the root configuration applies instead, and
    its strict mode would skip them; marking them here (innermost wrapper, so before pytest-asyncio turns
    marked coroutines into its own items) makes both invocations run the same tests.
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
