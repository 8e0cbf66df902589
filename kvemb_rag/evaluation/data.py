"""Loaders for local evaluation data in standard layouts (STS TSV, BEIR, text/label CSV, QMSum).

Every loader returns a frozen, validated dataclass and names the dataset after its folder or file stem
(``"STSBenchmark/sts-test"``, ``"scifact"``, ``"cranfield"``, ``"banking77"``, ``"qmsum"``), which is what
evaluation records carry.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvemb_rag.errors import ConfigError, DataNotFoundError, InputError

__all__ = [
    "ClassificationData",
    "LabelledTexts",
    "RetrievalData",
    "STSData",
    "dataset_name",
    "load_beir",
    "load_classification",
    "load_clustering",
    "load_labelled_csv",
    "load_qmsum",
    "load_sts",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class STSData:
    """Sentence pairs with gold similarity scores.

    Attributes:
        name: Dataset name for records, e.g. ``"STSBenchmark/sts-test"``.
        sentences1: First sentence of each pair.
        sentences2: Second sentence of each pair.
        scores: Gold scores (any monotone scale; STS-B uses 0-5).
    """

    name: str
    sentences1: tuple[str, ...]
    sentences2: tuple[str, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        sizes = {len(self.sentences1), len(self.sentences2), len(self.scores)}
        if len(sizes) != 1:
            raise InputError(
                f"{self.name}: sentences1, sentences2 and scores must have equal lengths, got "
                f"{len(self.sentences1)}, {len(self.sentences2)}, {len(self.scores)}."
            )
        if not self.scores:
            raise InputError(f"{self.name}: no sentence pairs.")
        bad = [i for i, s in enumerate(self.scores) if not math.isfinite(s)]
        if bad:
            raise InputError(f"{self.name}: non-finite scores at rows {bad[:10]}.")

    def __len__(self) -> int:
        return len(self.scores)

    def head(self, n: int) -> STSData:
        """The first ``n`` pairs (for quick runs)."""
        return STSData(self.name, self.sentences1[:n], self.sentences2[:n], self.scores[:n])


@dataclass(frozen=True)
class RetrievalData:
    """A retrieval benchmark: corpus, queries, graded relevance judgements.

    Attributes:
        name: Dataset name for records, e.g. ``"scifact"``.
        corpus: Document id -> text (BEIR: ``title + " " + text``).
        queries: Query id -> text; only queries that have judgements.
        qrels: Query id -> {document id: relevance grade}.
    """

    name: str
    corpus: Mapping[str, str]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]

    def __post_init__(self) -> None:
        if not self.corpus:
            raise InputError(f"{self.name}: empty corpus.")
        if not self.qrels:
            raise InputError(f"{self.name}: no relevance judgements.")
        missing = sorted(set(self.qrels) - set(self.queries))
        if missing:
            raise InputError(f"{self.name}: {len(missing)} judged queries have no text, e.g. {missing[:5]}.")
        unknown = {doc for rels in self.qrels.values() for doc in rels} - set(self.corpus)
        if unknown:
            # Kept, as pytrec_eval keeps them: they count in the ideal DCG and recall denominators.
            logger.warning("%s: %d judged documents are not in the corpus.", self.name, len(unknown))


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with class labels (one split of a classification / clustering set)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise InputError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels.")
        if not self.texts:
            raise InputError(f"{self.name}: no rows.")

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class ClassificationData:
    """A train and a test split of labelled texts."""

    name: str
    train: LabelledTexts
    test: LabelledTexts

    def __post_init__(self) -> None:
        unseen = set(self.test.labels) - set(self.train.labels)
        if unseen:
            raise InputError(f"{self.name}: test labels never seen in train: {sorted(unseen)[:10]}.")


def dataset_name(path: str | Path) -> str:
    """The record name of a dataset folder: its name, or its parent's for a ``beir`` sub-folder."""
    path = Path(path)
    return path.parent.name if path.name.lower() == "beir" else path.name


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist.")
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").split("\n")]


def _float_or_none(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def load_sts(path: str | Path) -> STSData:
    """Load an STS file: the STS-B TSV layout or a plain ``score<TAB>s1<TAB>s2`` TSV (detected).

    STS-B rows are ``genre, file, year, id, score, sentence1, sentence2[, extra...]``; some rows carry extra
    trailing fields (sources), so fields are split on tabs with no quote handling (sentences contain
    quotes). A plain file may start with a header line.

    Args:
        path: The file, or a directory holding exactly one ``*test*`` ``.csv``/``.tsv`` file.

    Returns:
        The pairs, named ``"<folder>/<stem>"`` (e.g. ``"STSBenchmark/sts-test"``).

    Raises:
        FileNotFoundError: No such file (or no single test file in the directory).
        ValueError: A row that fits neither layout (its line number is given).
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if "test" in p.stem and p.suffix in (".csv", ".tsv"))
        if len(candidates) != 1:
            raise DataNotFoundError(
                f"{path} must hold exactly one *test*.csv/.tsv STS file, found "
                f"{[p.name for p in candidates]}; pass the file itself."
            )
        path = candidates[0]
    lines = _read_lines(path)
    rows = [(number, line.split("\t")) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise InputError(f"{path} is empty.")
    first = rows[0][1]
    stsb = len(first) >= 7 and _float_or_none(first[4]) is not None
    if not stsb and _float_or_none(first[0]) is None and len(first) == 3:
        rows = rows[1:]  # header line of a plain file
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    for number, fields in rows:
        if stsb:
            score = _float_or_none(fields[4]) if len(fields) >= 7 else None
            pair = fields[5:7]
        else:
            score = _float_or_none(fields[0]) if len(fields) == 3 else None
            pair = fields[1:3]
        if score is None:
            layout = "STS-B (score in field 5, sentences in 6 and 7)" if stsb else "score<TAB>s1<TAB>s2"
            raise InputError(f"{path}:{number}: expected the {layout} layout, got {len(fields)} fields: {fields[:7]}.")
        s1.append(pair[0])
        s2.append(pair[1])
        scores.append(score)
    return STSData(f"{path.parent.name}/{path.stem}", tuple(s1), tuple(s2), tuple(scores))


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist.")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """Load a BEIR-layout folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (with header).

    Document text is ``(title + " " + text).strip()`` when the title is non-empty, else ``text.strip()``, as
    BEIR and MTEB build it. Only queries with judgements in the split are kept (BEIR, MTEB).

    Args:
        folder: The dataset folder (a folder named ``beir`` takes its parent's name, e.g. ``"cranfield"``).
        split: The qrels split.

    Returns:
        The benchmark.

    Raises:
        FileNotFoundError: A missing file.
        ValueError: A malformed qrels row (its line number is given).
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    corpus: dict[str, str] = {}
    for row in _read_jsonl(folder / "corpus.jsonl"):
        title = str(row.get("title") or "")
        text = str(row.get("text") or "")
        corpus[str(row["_id"])] = (title + " " + text).strip() if title else text.strip()
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(_read_lines(qrels_path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and fields[0] == "query-id":
            continue
        if len(fields) != 3 or _float_or_none(fields[2]) is None:
            raise InputError(f"{qrels_path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got {fields}.")
        qrels.setdefault(fields[0], {})[fields[1]] = int(float(fields[2]))
    all_queries = {str(row["_id"]): str(row["text"]) for row in _read_jsonl(folder / "queries.jsonl")}
    queries = {qid: all_queries[qid] for qid in qrels if qid in all_queries}
    return RetrievalData(dataset_name(folder), corpus, queries, qrels)


def load_labelled_csv(path: str | Path, name: str | None = None) -> LabelledTexts:
    """Load a ``text,category`` CSV (header required; ``label`` is accepted for ``category``).

    Texts can contain commas and quotes, so this uses a real CSV parser.

    Args:
        path: The CSV file.
        name: Dataset name; default ``"<folder>/<stem>"``.

    Returns:
        The texts and labels.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The header lacks a text or a label column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist.")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        label_column = next((c for c in ("category", "label") if c in columns), None)
        if "text" not in columns or label_column is None:
            raise InputError(f"{path}: header must have 'text' and 'category' (or 'label') columns, got {columns}.")
        rows = [(row["text"], row[label_column]) for row in reader]
    return LabelledTexts(
        name or f"{path.parent.name}/{path.stem}",
        tuple(t for t, _ in rows),
        tuple(label for _, label in rows),
    )


def load_classification(folder: str | Path) -> ClassificationData:
    """Load a classification folder with ``train.csv`` and ``test.csv`` (``text,category``, e.g. banking77).

    Args:
        folder: The dataset folder.

    Returns:
        Both splits, named after the folder.
    """
    folder = Path(folder)
    name = dataset_name(folder)
    return ClassificationData(
        name,
        load_labelled_csv(folder / "train.csv", f"{name}/train"),
        load_labelled_csv(folder / "test.csv", f"{name}/test"),
    )


def load_clustering(folder: str | Path, split: str = "test") -> LabelledTexts:
    """Load a clustering set: the ``<split>.csv`` of a ``text,category`` folder (e.g. banking77 test).

    Args:
        folder: The dataset folder.
        split: Which CSV file to cluster.

    Returns:
        The texts and their labels, named after the folder.
    """
    folder = Path(folder)
    data = load_labelled_csv(folder / f"{split}.csv")
    return LabelledTexts(dataset_name(folder), data.texts, data.labels)


def _transcript_text(turns: object, source: Path) -> str:
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{source}: 'meeting_transcripts' must be a non-empty list of turns.")
    return "\n".join(f"{turn['speaker']}: {turn['content']}" for turn in turns)


def _query_texts(meeting: Mapping[str, object], kinds: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind in kinds:
        entries = meeting.get(f"{kind}_query_list") or []
        if not isinstance(entries, list):
            raise InputError(f"'{kind}_query_list' must be a list.")
        out.extend((f"{kind}{i}", str(entry["query"])) for i, entry in enumerate(entries))
    return out


def load_qmsum(
    folder: str | Path, split: str = "val", query_types: Sequence[str] = ("general", "specific")
) -> RetrievalData:
    """Load QMSum as long-document retrieval: each query's relevant document is its meeting transcript.

    Documents come from ``meetings/<split>/*.json`` (id = file stem, text = the transcript turns as
    ``"speaker: content"`` lines). Queries (general and specific) come from ``<split>.jsonl``, each line
    matched to its meeting file by transcript; without that file, from the meeting files themselves.
    Query ids are ``"<meeting>/general<i>"`` / ``"<meeting>/specific<i>"``.

    Args:
        folder: The QMSum folder.
        split: ``"val"``, ``"test"`` or ``"train"``.
        query_types: ``"general"`` (whole-meeting questions such as "Summarize the whole meeting.", nearly
            identical across meetings) and/or ``"specific"`` (about one topic of the meeting).

    Returns:
        The benchmark, named after the folder (``"qmsum"``).

    Raises:
        FileNotFoundError: No meeting files for the split.
        ValueError: Unknown query types, or a query line whose transcript matches no meeting file.
    """
    bad = sorted(set(query_types) - {"general", "specific"})
    if bad or not query_types:
        raise ConfigError(f"query_types={list(query_types)!r} is not valid; use 'general' and/or 'specific'.")
    folder = Path(folder)
    meeting_dir = folder / "meetings" / split
    files = sorted(meeting_dir.glob("*.json")) if meeting_dir.is_dir() else []
    if not files:
        raise DataNotFoundError(f"no meeting transcripts in {meeting_dir}.")
    corpus: dict[str, str] = {}
    meetings: dict[str, dict[str, object]] = {}
    by_transcript: dict[str, str] = {}
    for file in files:
        meeting = json.loads(file.read_text(encoding="utf-8"))
        text = _transcript_text(meeting.get("meeting_transcripts"), file)
        corpus[file.stem] = text
        meetings[file.stem] = meeting
        by_transcript[text] = file.stem
    query_file = folder / f"{split}.jsonl"
    sources: list[tuple[str, Mapping[str, object]]] = []
    if query_file.is_file():
        for number, line in enumerate(_read_jsonl(query_file), start=1):
            text = _transcript_text(line.get("meeting_transcripts"), query_file)
            if text not in by_transcript:
                raise InputError(f"{query_file}:{number}: its transcript matches no file in {meeting_dir}.")
            sources.append((by_transcript[text], line))
    else:
        sources = list(meetings.items())
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for meeting_id, record in sources:
        for suffix, text in _query_texts(record, query_types):
            qid = f"{meeting_id}/{suffix}"
            queries[qid] = text
            qrels[qid] = {meeting_id: 1}
    return RetrievalData(dataset_name(folder), corpus, queries, qrels)
