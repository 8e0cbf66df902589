"""The ``kvemb`` command line end to end: real subprocesses, the real tiny model, a real Chroma database."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING

import pytest

from tests.conftest import shared_path
from tests.test_evaluation_store import METRICS, write_beir

if TYPE_CHECKING:
    from kvemb_rag import KVEmbedder

KVEMB = Path(sys.executable).with_name("kvemb")


def _command() -> list[str]:
    return [str(KVEMB)] if KVEMB.is_file() else [sys.executable, "-m", "kvemb_rag.cli"]


def kvemb(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``kvemb`` console script (``python -m kvemb_rag.cli`` if the script is not installed)."""
    return subprocess.run(_command() + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def kvemb_all(
    runs: list[tuple[list[str], Path]], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent ``kvemb`` commands concurrently (each pays the torch import; 2 cores halve it)."""
    procs = [
        (args, subprocess.Popen(_command() + args, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE, text=True))
        for args, cwd in runs
    ]
    done = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "Error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def make_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "notes").mkdir(parents=True)
    (corpus / ".hidden").mkdir()
    (corpus / "a.txt").write_text(
        "The cat sat on the mat. It was a sunny day in the garden.\n", encoding="utf-8"
    )
    (corpus / "notes" / "b.md").write_text(
        "# Notes\n\nThe dog ran in the park with a red ball.\n", encoding="utf-8"
    )
    lines = [
        {"id": "boat", "text": "A small boat on the river at night.", "lang": "en", "stars": 4},
        {"text": "The moon and the stars over the hill.", "tags": ["sky", "night"]},
    ]
    (corpus / "data.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json at all\n", encoding="utf-8"
    )
    (corpus / "blob.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")  # binary with a text suffix
    (corpus / "picture.png").write_bytes(b"\x89PNG\r\n")  # unsupported suffix: ignored
    (corpus / ".hidden" / "secret.txt").write_text("hidden", encoding="utf-8")
    return corpus


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_path: Path,
    tiny_embedder: KVEmbedder,  # selects the layers once, into the cache the subprocesses read
    subprocess_env: dict[str, str],
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """A corpus indexed once by ``kvemb index`` (--json summary); returns (workdir, db, process)."""
    work = tmp_path_factory.mktemp("cli")
    make_corpus(work)
    proc = kvemb(
        ["index", "corpus", "--db", "db", "--model", str(tiny_model_path), "--max-length", "512", "--json"],
        subprocess_env,
        work,
    )
    return work, work / "db", proc


def test_index_reports_documents_and_skips(
    indexed: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    _, _, proc = indexed
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["documents"], summary["added"], summary["unchanged"], summary["removed"]) == (4, 4, 0, 0)
    assert summary["chunks"] == summary["chunks_embedded"] == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    assert set(skipped) == {"blob.txt", "data.jsonl:3"}
    assert "binary" in skipped["blob.txt"] and "JSON" in skipped["data.jsonl:3"]
    assert "Skipped" in proc.stderr and "blob.txt" in proc.stderr  # warned, not silent


def test_search_json_table_and_info(
    indexed: tuple[Path, Path, subprocess.CompletedProcess[str]], subprocess_env: dict[str, str]
) -> None:
    work, db, _ = indexed
    where = '{"lang": "en"}'
    found, table, info, info_table = kvemb_all(
        [
            (["search", "a cat on a mat", "--db", str(db), "-k", "4", "--json"], work),
            (["search", "dog", "--db", str(db), "--per-document", "--where", where], work),
            (["info", "--db", str(db), "--json"], work),
            (["info", "--db", str(db)], work),
        ],
        subprocess_env,
    )
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    hits = result["hits"]
    assert result["query"] == "a cat on a mat" and result["collection"] == "kvemb"
    fields = {"score", "doc_id", "chunk_index", "start", "end", "text", "metadata", "source", "id"}
    assert fields <= set(hits[0])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_id = {h["doc_id"]: h for h in hits}
    assert set(by_id) == {"a.txt", "notes/b.md", "boat", "data.jsonl#2"}
    assert by_id["boat"]["metadata"]["stars"] == 4
    assert by_id["data.jsonl#2"]["metadata"]["tags"] == ["sky", "night"]
    assert by_id["a.txt"]["text"].startswith("The cat sat") and by_id["a.txt"]["start"] == 0

    assert table.returncode == 0, table.stderr
    assert "boat" in table.stdout and "score" in table.stdout and "a.txt" not in table.stdout

    assert info.returncode == 0, info.stderr
    (item,) = json.loads(info.stdout)
    assert (item["name"], item["records"], item["documents"], item["space"]) == ("kvemb", 4, 4, "cosine")
    identity = item["identity"]
    assert identity["max_length"] == 512 and identity["strategy"] == "kv" and identity["layers"]
    assert Path(identity["model"]).is_absolute()  # usable from any working directory
    assert info_table.returncode == 0, info_table.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in info_table.stdout.splitlines()
        if line.count("│") == 3
    }
    assert (rows["documents"], rows["records (chunks)"], rows["strategy"]) == ("4", "4", "kv")


def test_reindex_change_and_remove(
    tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    make_corpus(tmp_path)
    first = kvemb(
        ["index", "corpus", "--db", "db", "--model", str(tiny_model_path)], subprocess_env, tmp_path
    )
    assert first.returncode == 0, first.stderr
    again = kvemb(
        ["index", "corpus", "--db", "db", "--json"], subprocess_env, tmp_path
    )  # model from the collection
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["added"], summary["unchanged"], summary["chunks_embedded"]) == (0, 4, 0)

    (tmp_path / "corpus" / "a.txt").write_text("The cat now sleeps on the sofa.\n", encoding="utf-8")
    (tmp_path / "corpus" / "notes" / "b.md").unlink()
    (tmp_path / "corpus" / "c.md").write_text("A frog sings in the rain.\n", encoding="utf-8")
    changed = kvemb(["index", "corpus", "--db", "db"], subprocess_env, tmp_path)
    assert changed.returncode == 0, changed.stderr
    rows = {
        line.strip("│ ").split("│")[0].strip(): line.split("│")[-2].strip()
        for line in changed.stdout.splitlines()
        if line.count("│") == 3
    }
    assert (rows["added"], rows["replaced"], rows["removed"], rows["unchanged"]) == ("1", "1", "1", "2")
    assert (rows["documents"], rows["chunks"]) == ("4", "4")


def test_two_folders_with_the_same_file_names(
    tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """`kvemb index A`, `kvemb index B`, `kvemb index A` into one store: both READMEs stay, nothing re-done."""
    for name in ("A", "B"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "README.md").write_text(f"The {name} project keeps a cat.\n", encoding="utf-8")
        (tmp_path / name / "sub" / "notes.md").write_text(f"Notes of {name}: the dog ran.\n", encoding="utf-8")
    model = ["--model", str(tiny_model_path)]
    runs = [kvemb(["index", name, "--db", "db", *model, "--json"], subprocess_env, tmp_path) for name in "ABA"]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    first_a, first_b, again_a = (json.loads(p.stdout) for p in runs)
    assert (first_a["added"], first_b["added"], first_b["removed"], first_b["replaced"]) == (2, 2, 0, 0)
    assert (again_a["unchanged"], again_a["added"], again_a["removed"], again_a["chunks_embedded"]) == (2, 0, 0, 0)
    found = kvemb(["search", "cat", "--db", "db", "-k", "10", "--json"], subprocess_env, tmp_path)
    assert found.returncode == 0, found.stderr
    hits = {(Path(h["source"]).name, h["doc_id"]) for h in json.loads(found.stdout)["hits"]}
    assert hits == {(n, d) for n in "AB" for d in ("README.md", "sub/notes.md")}


def test_user_errors_exit_cleanly(
    indexed: tuple[Path, Path, subprocess.CompletedProcess[str]],
    tiny_model_path: Path,
    subprocess_env: dict[str, str],
    tmp_path: Path,
) -> None:
    work, db, _ = indexed
    (tmp_path / "empty").mkdir()
    shutil.copytree(db, tmp_path / "db")  # the mismatch run must not touch the shared database
    missing, overlapping, empty, unknown, no_db, mismatch = kvemb_all(
        [
            (["index", "nope", "--db", "x"], tmp_path),
            (["index", "corpus", "corpus/a.txt", "--db", "x"], work),
            (["index", "empty", "--db", "x"], tmp_path),
            (["search", "cat", "--db", str(db), "--collection", "unknown"], work),
            (["search", "cat", "--db", "no-such-db"], tmp_path),
            (
                [
                    *("index", str(work / "corpus"), "--db", "db"),
                    *("--model", str(tiny_model_path), "--max-length", "256"),
                ],
                tmp_path,
            ),
        ],
        subprocess_env,
    )
    assert_user_error(missing, "not found", "nope")
    assert_user_error(empty, "No .txt")
    assert_user_error(overlapping, "a.txt' comes from both", "overlapping paths once")
    assert_user_error(unknown, "'unknown' does not exist", "'kvemb'")
    assert_user_error(no_db, "No database")
    # Same collection, another embedder setting: refused, both values shown.
    assert_user_error(mismatch, "different embedder", "max_length", "512", "256")


def test_layers_and_eval_commands(
    tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    sts = shared_path("data/sts/STSBenchmark/sts-test.csv")
    small = tmp_path / "sts-test.csv"
    small.write_text(
        "".join(sts.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8"
    )
    plot = tmp_path / "curve.png"
    layers, evaluation = kvemb_all(
        [
            (["layers", "--model", str(tiny_model_path), "--plot", str(plot)], tmp_path),
            (
                [
                    *("eval", "--model", str(tiny_model_path), "--sts", str(small), "--output", "out.json"),
                    *("--strategies", "kv,last", "-s", "mean"),  # comma lists and repeats together
                ],
                tmp_path,
            ),
        ],
        subprocess_env,
    )
    assert layers.returncode == 0, layers.stderr
    # The default (middle) window is re-routed; the paper's ID window is shown beside it.
    assert "Re-routed layers (middle rule): [2]; ID-minimum window: [" in layers.stdout
    assert "re-routed" in layers.stdout and "ID-minimum window" in layers.stdout
    assert "ignored by the ID rule" in layers.stdout  # the first 20% of layers are never chosen by it
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert evaluation.returncode == 0, evaluation.stderr
    assert "| model | strategy |" in evaluation.stdout and "spearman" in evaluation.stdout
    records = json.loads((tmp_path / "out.json").read_text())
    assert [(r["strategy"], r["task"], r["metric"]) for r in records] == [
        (name, "sts", "spearman") for name in ("kv", "last", "mean")
    ]


def test_eval_list_options_are_checked(tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    bad_length, empty_item = kvemb_all(
        [
            (["eval", "--model", str(tiny_model_path), "--max-lengths", "256,abc"], tmp_path),
            (["eval", "--model", str(tiny_model_path), "--strategies", "kv,,last"], tmp_path),
        ],
        subprocess_env,
    )
    assert_user_error(bad_length, "--max-lengths takes positive integers", "'abc'")
    assert_user_error(empty_item, "--strategies has an empty item")


def test_eval_search_scores_retrieval_through_the_store(
    tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    beir = str(write_beir(tmp_path / "rare"))
    model = ("eval", "--model", str(tiny_model_path))
    searched, bad_mode, no_retrieval = kvemb_all(
        [
            (
                [*model, "--retrieval", beir, "--search", "lexical,hybrid", "--chunk-size", "64", "-o", "out.json"],
                tmp_path,
            ),
            ([*model, "--retrieval", beir, "--search", "lexical,fuzzy"], tmp_path),
            ([*model, "--sts", "pairs.tsv", "--search", "dense"], tmp_path),
        ],
        subprocess_env,
    )
    assert searched.returncode == 0, searched.stderr
    assert "rare ndcg@10/lexical" in searched.stdout and "rare mrr@10/hybrid" in searched.stdout
    records = json.loads((tmp_path / "out.json").read_text())
    assert [(r["strategy"], r["task"], r["metric"]) for r in records] == [
        ("kv", "retrieval", f"{metric}/{mode}") for mode in ("lexical", "hybrid") for metric in METRICS
    ]
    assert {r["metric"]: r["value"] for r in records}["ndcg@10/lexical"] == 1.0  # rare words: first place
    assert_user_error(bad_mode, "Search mode 'fuzzy' is not valid; choose one of hybrid, dense, lexical")
    assert_user_error(no_retrieval, "--search scores retrieval datasets; give --retrieval DIR")


def test_index_and_search_with_a_gguf_file(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """`--model file.gguf`: the collection records the file's SHA-256 and searches find the answer."""
    import hashlib

    from kvemb_rag.engine.models import DEFAULT_MODEL, bundled_model_path

    try:
        gguf = bundled_model_path(DEFAULT_MODEL)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "bread.md").write_text("Bread dough rises because yeast makes carbon dioxide.\n")
    (tmp_path / "notes" / "cats.md").write_text("Cats sleep up to sixteen hours a day.\n")
    (tmp_path / "notes" / "rust.md").write_text("Rust has no garbage collector; ownership frees memory.\n")
    model = ["--model", str(gguf)]
    indexed = kvemb(["index", "notes", "--db", "db", *model, "--json"], subprocess_env, tmp_path)
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["added"] == 3
    info, found = kvemb_all(
        [
            (["info", "--db", "db", "--json"], tmp_path),
            (["search", "Why does dough rise?", "--db", "db", "-k", "1", "--json"], tmp_path),
        ],
        subprocess_env,
    )
    assert info.returncode == 0 and found.returncode == 0, info.stderr + found.stderr
    identity = json.loads(info.stdout)[0]["identity"]
    assert identity["model"] == str(gguf)
    assert identity["weights"] == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert json.loads(found.stdout)["hits"][0]["doc_id"] == "bread.md"


def test_demo_runs_end_to_end(tiny_model_path: Path, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """`make demo`'s module on the tiny model: similarity matrix, index, searches, an answer citing chunks."""
    env = {**subprocess_env, "KVEMB_MODEL": str(tiny_model_path), "KVEMB_DEMO_STORE": str(tmp_path / "store")}
    proc = subprocess.run(
        [sys.executable, "-m", "kvemb_rag.demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Cosine similarity" in out and "Indexed into" in out and "Question:" in out and "Answer" in out
    assert len(re.findall(r"(?:README|docs/[\w-]+)\.md", out)) >= 3  # the hits name their documents
    assert re.search(r"\[1\] \S+ characters \d+-\d+", out), out[-2000:]  # the answer's sources
    assert (tmp_path / "store").is_dir()
