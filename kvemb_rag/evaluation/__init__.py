"""Evaluation harness: STS, retrieval, classification, clustering and long-document retrieval on local files.

Metrics match the standard tools (pytrec_eval / BEIR / MTEB; see :mod:`kvemb_rag.evaluation.metrics`), and
all-MiniLM-L6-v2 reproduces its published MTEB figures through this harness (``tests/test_evaluation.py``,
``-m slow``). :func:`evaluate_store_retrieval` (``run_evaluation(search_modes=...)``) scores retrieval through
the store's own chunking and search modes instead of whole-document exact search. For MTEB's own tasks, wrap
a model with :class:`kvemb_rag.evaluation.mteb.MTEBEncoder`.

Example:
    >>> from kvemb_rag.evaluation import markdown_table, run_evaluation
    >>> records = run_evaluation(  # doctest: +SKIP
    ...     ["Qwen/Qwen3-0.6B"], ["kv", "last"],
    ...     sts=["../shared/data/sts/STSBenchmark/sts-test.csv"], retrieval=["../shared/data/scifact"])
    >>> print(markdown_table(records))  # doctest: +SKIP
"""

from __future__ import annotations

from kvemb_rag.evaluation.data import (
    ClassificationData,
    LabelledTexts,
    RetrievalData,
    STSData,
    load_beir,
    load_classification,
    load_clustering,
    load_qmsum,
    load_sts,
)
from kvemb_rag.evaluation.encoders import (
    SENTENCE_TRANSFORMERS_STRATEGY,
    Encoder,
    SentenceTransformerEncoder,
    load_encoder,
    minilm_path,
)
from kvemb_rag.evaluation.metrics import ClassificationProtocol
from kvemb_rag.evaluation.runner import (
    TASKS,
    Record,
    markdown_table,
    plot_long_documents,
    read_results_json,
    run_evaluation,
    write_results_json,
)
from kvemb_rag.evaluation.store_search import evaluate_store_retrieval
from kvemb_rag.evaluation.tasks import (
    DEFAULT_MAX_LENGTHS,
    evaluate_classification,
    evaluate_clustering,
    evaluate_long_documents,
    evaluate_retrieval,
    evaluate_sts,
)

__all__ = [
    "DEFAULT_MAX_LENGTHS",
    "SENTENCE_TRANSFORMERS_STRATEGY",
    "TASKS",
    "ClassificationData",
    "ClassificationProtocol",
    "Encoder",
    "LabelledTexts",
    "Record",
    "RetrievalData",
    "STSData",
    "SentenceTransformerEncoder",
    "evaluate_classification",
    "evaluate_clustering",
    "evaluate_long_documents",
    "evaluate_retrieval",
    "evaluate_store_retrieval",
    "evaluate_sts",
    "load_beir",
    "load_classification",
    "load_clustering",
    "load_encoder",
    "load_qmsum",
    "load_sts",
    "markdown_table",
    "minilm_path",
    "plot_long_documents",
    "read_results_json",
    "run_evaluation",
    "write_results_json",
]
