"""How ``kvemb`` reports errors: a KVEmbError is one message and exit status 1; anything else is a bug."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from chromadb.errors import ChromaError
from typer.testing import CliRunner

from kvemb_rag import KVEmbError
from kvemb_rag.cli import _state, _user_errors, app
from kvemb_rag.errors import ConfigError, InputError


@pytest.fixture(autouse=True)
def _quiet() -> None:
    _state["verbose"] = False


@pytest.mark.parametrize("error", [ConfigError("--db 'x' is a file; give a folder."), InputError("empty text")])
def test_a_kvemb_error_is_one_line_and_status_1(error: KVEmbError, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exit_info, _user_errors():
        raise error
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"Error: {error}"]


def test_verbose_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    _state["verbose"] = True
    with pytest.raises(typer.Exit), _user_errors():
        raise ConfigError("bad setting")
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("Error: bad setting")


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), ValueError("not ours"), OSError("not ours either")])
def test_other_exceptions_propagate(bug: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(type(bug)) as raised, _user_errors():
        raise bug
    assert raised.value is bug and capsys.readouterr().err == ""


def test_the_app_reports_user_errors_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    runner = CliRunner()
    cases = {
        ("search", "cat", "--db", str(tmp_path / "file")): "is a file; give a folder",
        ("search", "cat", "--db", str(tmp_path / "none")): "No database at",
        ("index", str(tmp_path / "nope"), "--db", str(tmp_path / "db")): "Path(s) not found",
        ("search", "cat", "--db", str(tmp_path), "--where", "[1]"): "--where must be a JSON object",
    }
    for args, needle in cases.items():
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 1, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output, result.output


def test_the_app_lets_a_bug_propagate(tmp_path: Path) -> None:
    """A corrupt database file makes Chroma fail: not a KVEmbError, so the traceback is not swallowed."""
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "chroma.sqlite3").write_text("garbage, not SQLite", encoding="utf-8")
    with pytest.raises(ChromaError):
        CliRunner().invoke(app, ["info", "--db", str(tmp_path / "db")], catch_exceptions=False)
