"""Set-up of the llama-index-retrievers-kvemb tests: a private layer-selection cache and asyncio marking.

The adapter suites share them, with their other helpers, in the repository's tests/adapter_helpers.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository root (integrations/llama-index-retrievers/tests/conftest.py -> parents[3]), so that
# tests.adapter_helpers imports.
_REPO = str(Path(__file__).resolve().parents[3])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.adapter_helpers import _private_kvemb_cache, pytest_pycollect_makeitem  # noqa: E402

__all__ = ["_private_kvemb_cache", "pytest_pycollect_makeitem"]
