"""The evaluation run: models x strategies x datasets -> flat records, JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kvemb_rag.engine.config import STRATEGIES
from kvemb_rag.errors import ConfigError, InputError
from kvemb_rag.evaluation import data as eval_data
from kvemb_rag.evaluation import tasks as eval_tasks
from kvemb_rag.evaluation.encoders import (
    SENTENCE_TRANSFORMERS_STRATEGY,
    Encoder,
    is_sentence_transformers_dir,
    kv_embedder,
    load_encoder,
)
from kvemb_rag.evaluation.metrics import ClassificationProtocol, optional_import
from kvemb_rag.evaluation.store_search import check_search_modes, evaluate_store_retrieval

__all__ = [
    "TASKS",
    "Record",
    "markdown_table",
    "plot_long_documents",
    "read_results_json",
    "run_evaluation",
    "write_results_json",
]

logger = logging.getLogger(__name__)

#: Task names used in records, in table order.
TASKS: tuple[str, ...] = ("sts", "retrieval", "classification", "clustering", "long-docs")


@dataclass(frozen=True)
class Record:
    """One number of an evaluation, serialised as ``{"model","strategy","task","dataset","metric","value"}``.

    Attributes:
        model: The model string as given (hub name or local path).
        strategy: The embedding strategy (``"kv"``, ``"last"``...; ``"sentence-transformers"`` for those).
        task: One of :data:`TASKS`.
        dataset: Folder or file stem, e.g. ``"STSBenchmark/sts-test"``, ``"scifact"``.
        metric: E.g. ``"spearman"``, ``"ndcg@10"``, ``"ndcg@10/chunk/512"``, ``"ndcg@10/hybrid"`` (store search).
        value: The score (finite).
    """

    model: str
    strategy: str
    task: str
    dataset: str
    metric: str
    value: float

    def __post_init__(self) -> None:
        for field_name in ("model", "strategy", "task", "dataset", "metric"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise InputError(f"Record.{field_name} must be a non-empty str, got {value!r}.")
        if self.task not in TASKS:
            raise InputError(f"Record.task={self.task!r} is not valid; choose one of {', '.join(TASKS)}.")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise InputError(f"Record.value must be a finite number, got {self.value!r}.")
        object.__setattr__(self, "value", float(self.value))

    def to_dict(self) -> dict[str, str | float]:
        """The JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        expected = {"model", "strategy", "task", "dataset", "metric", "value"}
        if set(data) != expected:
            raise InputError(f"a record needs exactly the keys {sorted(expected)}, got {sorted(data)}.")
        return cls(**data)


def write_results_json(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as a JSON list of ``{"model","strategy","task","dataset","metric","value"}`` objects.

    Args:
        records: The records.
        path: Output file (parent folders are created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in records], indent=2) + "\n", encoding="utf-8")
    return path


def read_results_json(path: str | Path) -> list[Record]:
    """Read records written by :func:`write_results_json`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(data).__name__}.")
    return [Record.from_dict(item) for item in data]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(records: Sequence[Record], *, digits: int = 4) -> str:
    """A markdown table: one row per (model, strategy), one column per (task, dataset, metric).

    Rows and columns keep first-appearance order; columns are grouped by task in :data:`TASKS` order.
    Missing cells are ``-``.

    Args:
        records: The records.
        digits: Decimals shown.

    Returns:
        The table, ending with a newline (empty string for no records).
    """
    if not records:
        return ""
    rows = list(dict.fromkeys((r.model, r.strategy) for r in records))
    columns = sorted(
        dict.fromkeys((r.task, r.dataset, r.metric) for r in records),
        key=lambda c: TASKS.index(c[0]),  # stable: keeps first appearance within a task
    )
    values = {(r.model, r.strategy, r.task, r.dataset, r.metric): r.value for r in records}
    header = ["model", "strategy", *(f"{task}: {dataset} {metric}" for task, dataset, metric in columns)]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join([" --- ", " --- "] + [" ---: "] * len(columns)) + "|",
    ]
    for model, strategy in rows:
        cells = [model, strategy]
        for task, dataset, metric in columns:
            value = values.get((model, strategy, task, dataset, metric))
            cells.append("-" if value is None else f"{value:.{digits}f}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_long_documents(records: Sequence[Record], path: str | Path, *, dataset: str | None = None) -> Path:
    """Plot long-document nDCG@10 against the document token limit, chunked (solid) vs truncated (dashed).

    Args:
        records: Records; only ``task == "long-docs"`` ones are used.
        path: The PNG to write.
        dataset: Which long-document dataset to plot; default the only one present.

    Returns:
        The path written.

    Raises:
        ValueError: No long-document records (for ``dataset``), or several datasets and none chosen.
    """
    # matplotlib.figure, not pyplot: leaves the user's backend alone.
    figure_module = optional_import("matplotlib.figure", "matplotlib")

    points = [r for r in records if r.task == "long-docs" and (dataset is None or r.dataset == dataset)]
    datasets = sorted({r.dataset for r in points})
    if not points:
        raise InputError(f"no long-docs records{f' for {dataset!r}' if dataset else ''} to plot.")
    if len(datasets) > 1:
        raise ConfigError(f"records cover several long-document datasets {datasets}; pass dataset=...")
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in points:
        _, mode, length = r.metric.split("/")
        series.setdefault((r.model, r.strategy, mode), []).append((int(length), r.value))
    figure = figure_module.Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.add_subplot()
    colours: dict[tuple[str, str], str] = {}
    for (model, strategy, mode), xy in series.items():
        colour = colours.setdefault((model, strategy), f"C{len(colours) % 10}")
        xs, ys = zip(*sorted(xy), strict=True)
        axes.plot(
            xs,
            ys,
            marker="o",
            color=colour,
            linestyle="-" if mode == "chunk" else "--",
            label=f"{Path(model).name or model} / {strategy} / {mode}",
        )
    axes.set_xscale("log", base=2)
    lengths = sorted({x for xy in series.values() for x, _ in xy})
    axes.set_xticks(lengths, [str(x) for x in lengths])
    axes.set_xlabel("document token limit (max_length)")
    axes.set_ylabel("nDCG@10")
    axes.set_title(f"{datasets[0]}: long-document retrieval, chunked vs truncated")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


@dataclass(frozen=True)
class _Datasets:
    sts: tuple[eval_data.STSData, ...]
    retrieval: tuple[eval_data.RetrievalData, ...]
    classification: tuple[eval_data.ClassificationData, ...]
    clustering: tuple[eval_data.LabelledTexts, ...]
    long_docs: tuple[eval_data.RetrievalData, ...]

    def count(self) -> int:
        return sum(
            len(group) for group in (self.sts, self.retrieval, self.classification, self.clustering, self.long_docs)
        )


def _release_models() -> None:
    """Drop the engine's shared models so that the next model fits in memory (several LLMs in one run)."""
    import gc

    from kvemb_rag.engine.loader import clear_model_cache

    clear_model_cache()
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _encoders(models: Sequence[str | Path], strategies: Sequence[str]) -> list[tuple[str, str, str | Path]]:
    jobs: list[tuple[str, str, str | Path]] = []
    for model in models:
        if is_sentence_transformers_dir(model):
            jobs.append((str(model), SENTENCE_TRANSFORMERS_STRATEGY, model))
        else:
            jobs.extend((str(model), strategy, model) for strategy in strategies)
    return jobs


def run_evaluation(
    models: Sequence[str | Path],
    strategies: Sequence[str] = ("kv",),
    *,
    sts: Sequence[str | Path] = (),
    retrieval: Sequence[str | Path] = (),
    classification: Sequence[str | Path] = (),
    clustering: Sequence[str | Path] = (),
    long_docs: Sequence[str | Path] = (),
    max_lengths: Sequence[int] = eval_tasks.DEFAULT_MAX_LENGTHS,
    engine_kwargs: Mapping[str, Any] | None = None,
    split: str = "test",
    long_docs_split: str = "val",
    classification_protocol: ClassificationProtocol | None = None,
    clustering_seed: int = 42,
    ignore_identical_ids: bool = False,
    batch_size: int | None = None,
    plot_dir: str | Path | None = None,
    progress: bool = True,
    search_modes: Sequence[str] = (),
    chunk_size: int | None = None,
) -> list[Record]:
    """Evaluate every model x strategy on every dataset given; return flat records.

    All datasets are loaded (and validated) before any model. A local sentence-transformers directory
    (``modules.json``) is evaluated once, with strategy ``"sentence-transformers"``, whatever
    ``strategies`` says; other models once per strategy with :class:`kvemb_rag.KVEmbedder` (strategies of one
    model share its loaded weights, which are released from the engine's shared-model cache before the next
    model is loaded, so several large models can be evaluated in turn).

    Args:
        models: Hub names or local directories (decoder LLMs or sentence-transformers models).
        strategies: KVEmbedder strategies, e.g. ``("kv", "kv-ablation", "last", "mean", "prompteol",
            "echo")``.
        sts: STS files (see :func:`~kvemb_rag.evaluation.data.load_sts`): Spearman of cosine similarity.
        retrieval: BEIR folders: nDCG@10, Recall@100, MRR@10 on the ``split`` qrels (whole documents, exact
            search; through the store instead with ``search_modes``).
        classification: ``train.csv``/``test.csv`` folders: logistic-regression accuracy.
        clustering: Same folders; k-means V-measure on ``test.csv``.
        long_docs: QMSum-style folders: nDCG@10 per ``max_lengths`` x {chunk, truncate}.
        max_lengths: Document token limits of the long-document sweep.
        engine_kwargs: Extra :class:`kvemb_rag.KVEmbedder` arguments (``device``, ``dtype``, ``layers``...).
        split: qrels split of the retrieval folders.
        long_docs_split: Split of the long-document folders.
        classification_protocol: Default MTEB's (10 x 8 samples per label, seed 42, max_iter 100).
        clustering_seed: k-means seed.
        ignore_identical_ids: Drop retrieved documents whose id equals the query id (see
            :func:`~kvemb_rag.evaluation.tasks.evaluate_retrieval`).
        batch_size: Texts per forward pass; default each encoder's.
        plot_dir: Where to write ``long_docs_<dataset>.png`` plots; ``None`` for none.
        progress: Show progress bars.
        search_modes: Score the retrieval datasets as users get them instead: each corpus is indexed once
            per model x strategy into a temporary :class:`kvemb_rag.store.KVStore` (the store's chunking) and
            searched in each of these modes of :data:`kvemb_rag.store.SEARCH_MODES` with
            ``query(..., per_document=True, mode=mode)``; metrics are named per mode (``"ndcg@10/hybrid"``).
            KVEmbedder strategies only. Empty: whole-document exact search.
        chunk_size: Tokens per stored chunk for ``search_modes``; default the store's.

    Returns:
        The records, in evaluation order.

    Raises:
        ValueError: No model, no dataset, no strategy for a decoder model, an unknown strategy or search
            mode, ``search_modes`` without ``retrieval`` or with a sentence-transformers model, or
            ``chunk_size`` without ``search_modes``.

    Example:
        >>> records = run_evaluation(  # doctest: +SKIP
        ...     ["Qwen/Qwen3-0.6B", str(minilm_path())], ["kv", "last"],
        ...     sts=["data/sts/STSBenchmark/sts-test.csv"], retrieval=["data/scifact"])
        >>> print(markdown_table(records))  # doctest: +SKIP
    """
    if not models:
        raise ConfigError("no models given.")
    modes = check_search_modes(search_modes)
    if modes and not retrieval:
        raise ConfigError("search_modes apply to retrieval datasets only; pass retrieval=[BEIR folder].")
    if chunk_size is not None and not modes:
        raise ConfigError("chunk_size applies to store search only; pass search_modes=('hybrid',) or others.")
    engine = dict(engine_kwargs or {})
    data = _Datasets(
        tuple(eval_data.load_sts(p) for p in sts),
        tuple(eval_data.load_beir(p, split) for p in retrieval),
        tuple(eval_data.load_classification(p) for p in classification),
        tuple(eval_data.load_clustering(p) for p in clustering),
        tuple(eval_data.load_qmsum(p, long_docs_split) for p in long_docs),
    )
    if data.count() == 0:
        raise ConfigError("no datasets given; pass sts=, retrieval=, classification=, clustering= or long_docs=.")
    jobs = _encoders(models, strategies)
    if not jobs:
        raise ConfigError("no strategies given for the decoder models; pass e.g. strategies=('kv',).")
    unknown = sorted({s for _, s, _ in jobs} - set(STRATEGIES) - {SENTENCE_TRANSFORMERS_STRATEGY})
    if unknown:
        raise ConfigError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}.")
    if any(length < 1 for length in max_lengths):
        raise ConfigError(f"max_lengths must be positive, got {list(max_lengths)}.")
    not_searchable = sorted({m for m, s, _ in jobs if s == SENTENCE_TRANSFORMERS_STRATEGY})
    if modes and not_searchable:
        raise ConfigError(
            f"store search (search modes) needs KVEmbedder strategies; {', '.join(not_searchable)} is a "
            "sentence-transformers model, which cannot be indexed into the store. Evaluate it without search modes."
        )
    encode_kwargs: dict[str, Any] = {"show_progress_bar": progress}
    if batch_size is not None:
        encode_kwargs["batch_size"] = batch_size

    def score_retrieval(encoder: Encoder, dataset: eval_data.RetrievalData) -> Mapping[str, float]:
        if not modes:
            return eval_tasks.evaluate_retrieval(
                encoder, dataset, ignore_identical_ids=ignore_identical_ids, **encode_kwargs
            )
        embedder = kv_embedder(encoder)
        if batch_size is not None and batch_size != embedder.config.batch_size:
            embedder = embedder.with_options(batch_size=batch_size)  # shares the loaded model
        return evaluate_store_retrieval(
            embedder,
            dataset,
            modes,
            chunk_size=chunk_size,
            ignore_identical_ids=ignore_identical_ids,
            progress=progress,
        )

    records: list[Record] = []
    bar = tqdm(total=len(jobs) * data.count(), desc="Evaluating", unit="dataset", disable=not progress)
    try:
        for index, (model, strategy, source) in enumerate(jobs):
            encoder = load_encoder(source, strategy, **engine)
            records.extend(
                _evaluate_one(
                    encoder,
                    model,
                    strategy,
                    data,
                    bar,
                    encode_kwargs,
                    classification_protocol,
                    clustering_seed,
                    score_retrieval,
                    max_lengths,
                )
            )
            del encoder
            if index + 1 == len(jobs) or jobs[index + 1][0] != model:
                _release_models()
    finally:
        bar.close()
    if plot_dir is not None:
        for dataset in data.long_docs:
            plot_long_documents(records, Path(plot_dir) / f"long_docs_{dataset.name}.png", dataset=dataset.name)
    return records


def _evaluate_one(
    encoder: Encoder,
    model: str,
    strategy: str,
    data: _Datasets,
    bar: Any,
    encode_kwargs: dict[str, Any],
    protocol: ClassificationProtocol | None,
    clustering_seed: int,
    score_retrieval: Callable[[Encoder, eval_data.RetrievalData], Mapping[str, float]],
    max_lengths: Sequence[int],
) -> list[Record]:
    out: list[Record] = []

    def emit(task: str, dataset: str, scores: Mapping[str, float]) -> None:
        for metric, value in scores.items():
            record = Record(model, strategy, task, dataset, metric, value)
            logger.info("%s [%s] %s %s %s = %.4f", model, strategy, task, dataset, metric, value)
            out.append(record)
        bar.update(1)

    def start(task: str, dataset: str) -> None:
        bar.set_description(f"{Path(model).name or model} [{strategy}] {task}: {dataset}")

    kw = encode_kwargs
    # (task, its datasets, how one dataset is scored)
    t = eval_tasks
    evaluations: list[tuple[str, Sequence[Any], Callable[[Any], Mapping[str, float]]]] = [
        ("sts", data.sts, lambda d: t.evaluate_sts(encoder, d, **kw)),
        ("retrieval", data.retrieval, lambda d: score_retrieval(encoder, d)),
        ("classification", data.classification, lambda d: t.evaluate_classification(encoder, d, protocol, **kw)),
        ("clustering", data.clustering, lambda d: t.evaluate_clustering(encoder, d, seed=clustering_seed, **kw)),
        ("long-docs", data.long_docs, lambda d: t.evaluate_long_documents(encoder, d, max_lengths, **kw)),
    ]
    for task, task_datasets, evaluate in evaluations:
        for dataset in task_datasets:
            start(task, dataset.name)
            emit(task, dataset.name, evaluate(dataset))
    return out
