"""The notebooks: committed without outputs, and each runs top to bottom on the tiny model (nbclient)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
DATA = SHARED / "data"  # optional: the notebooks use what is there (the tiny model itself is required)
MODEL_LINE = 'MODEL = os.environ.get("KVEMB_MODEL", DEFAULT_MODEL)'


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_langchain_rag.ipynb", "02_llamaindex.ipynb", "03_long_documents_and_method.ipynb", "04_offline_rag.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_one_cell_picks_the_model(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    picking = [c for c in nb.cells if c.cell_type == "code" and "KVEMB_MODEL" in c.source]
    assert len(picking) == 1 and MODEL_LINE in picking[0].source  # the bundled default unless KVEMB_MODEL is set
    assert "from kvemb_rag.engine.models import DEFAULT_MODEL" in picking[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_on_the_tiny_model(
    path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_path: Path,
    kvemb_cache_dir: Path,
) -> None:
    from nbclient import NotebookClient

    work = tmp_path / "notebooks"
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)  # a working copy: the Chroma stores the notebook writes land in tmp_path
    # The kernel inherits this environment. The layer-selection cache is the session's: the first kernel (or
    # the session's tiny_embedder, if it ran) selects the tiny model's layers once, later kernels read them.
    monkeypatch.setenv("KVEMB_MODEL", str(tiny_model_path))
    monkeypatch.setenv("KVEMB_CACHE_DIR", str(kvemb_cache_dir))
    monkeypatch.setenv("KVEMB_DATA_DIR", str(DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    # A 260K-parameter model gains nothing from threads, and on a busy machine OpenMP spin-waiting makes
    # it many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")

    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()

    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "Traceback" not in text
    if path.stem.startswith("01"):
        assert (work / "chroma_langchain").is_dir()
        assert text.rstrip().endswith("True"), text[-500:]  # same passages after reopening the store
    elif path.stem.startswith("02"):
        assert (work / "chroma_llamaindex").is_dir()
        assert text.rstrip().endswith("True"), text[-500:]
    elif path.stem.startswith("04"):
        assert "shares the weights: True" in text and "Answer:" in text and "[1] " in text
        assert (work / "offline_rag_store").is_dir()
    else:
        images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1  # the intrinsic-dimension curve
        if (DATA / "qmsum" / "meetings" / "val").is_dir():
            assert "chunks" in text and "best chunk" in text
        if (DATA / "sts" / "STSBenchmark" / "sts-dev.csv").is_file():
            assert "kv-ablation: Spearman" in text and "(100 pairs)" in text
    assert not list((REPO / "notebooks").glob("chroma_*")), "a notebook wrote its store into the repository"
