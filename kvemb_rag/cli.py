"""The ``kvemb`` command line: index files into a Chroma store, search it, inspect it, and show layer choice.

Commands:

* ``kvemb index PATH... --db DIR`` -- ``.txt`` / ``.md`` / ``.jsonl`` files (folders recursively) into a
  collection; each PATH is synchronised (documents that vanished from it are removed);
* ``kvemb search "query" --db DIR`` -- ranked chunks (or documents with ``--per-document``);
* ``kvemb info --db DIR`` -- collections, sizes and embedder identities;
* ``kvemb layers --model M`` -- the intrinsic-dimension curve per layer and the chosen layers;
* ``kvemb eval --model M --retrieval DIR ...`` -- the evaluation harness (:mod:`kvemb_rag.evaluation`);
* ``kvemb serve --model M`` -- an OpenAI-compatible embeddings API (:mod:`kvemb_rag.serve`);
* ``kvemb index PATH... --url URL --ray N`` -- embedding on N Ray actors (:mod:`kvemb_rag.store.distributed`).

User errors (a missing path, an unknown collection, an embedder mismatch...) print one message and exit
with status 1 (2 for bad command-line usage); ``--verbose`` also prints tracebacks.

Example:
    $ kvemb index docs README.md --db .kvemb/store --model ../shared/data/models/stories260K/hf
    $ kvemb search "how are layers chosen?" --db .kvemb/store -k 3 --per-document
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from kvemb_rag.engine.models import DEFAULT_MODEL, default_model
from kvemb_rag.store import DEFAULT_CHUNK_SIZE, resolve_model  # chromadb is imported when a store opens

if TYPE_CHECKING:
    from kvemb_rag.store import Hit, IndexSummary, KVStore
    from kvemb_rag.store.distributed import RayIndexConfig

__all__ = ["DEFAULT_MODEL", "app", "default_model", "hits_table", "main", "summary_table"]

logger = logging.getLogger(__name__)

# Exit status of user errors (typer/click use 2 for usage errors).
_EXIT_USER_ERROR = 1
_SNIPPET_CHARS = 160

app = typer.Typer(
    name="kvemb",
    help="Training-free LLM embeddings (KV-Embedding) with a local Chroma store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
_state: dict[str, bool] = {"verbose": False}


class UserError(Exception):
    """An error caused by the command's input; printed without a traceback."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from kvemb_rag.sources import SourceError
    from kvemb_rag.store import KVStoreError

    # ValueError / OSError: the engine's validation (bad max_length, strategy...) and unloadable models or
    # unreadable paths; --verbose shows their tracebacks.
    return (UserError, KVStoreError, SourceError, ValueError, OSError)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn user errors into a message on stderr and exit status 1 (tracebacks only with --verbose)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[red]Interrupted.[/red] Re-running the same command resumes where it stopped.")
        raise typer.Exit(130) from None
    except Exception as exc:
        if not isinstance(exc, _user_error_types()):
            raise
        if _state["verbose"]:
            err.print_exception()
        err.print(f"[bold red]Error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(_EXIT_USER_ERROR) from None


@app.callback()
def _main_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log progress details and show tracebacks.")
    ] = False,
) -> None:
    """Training-free LLM embeddings (KV-Embedding) with a local Chroma store."""
    _state["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False, markup=False)],
        force=True,
    )


def _open_store(
    db: Path | None, collection: str, *, must_exist: bool, url: str | None = None, chunk_size: int | None = None
) -> KVStore:
    from kvemb_rag.store import KVStore

    if url is not None:
        if db is not None:
            raise UserError(
                "Give either --db (a local database folder) or --url (a Chroma server), not both."
            )
        return KVStore(url=url, collection=collection, chunk_size=chunk_size)
    if db is None:
        raise UserError(
            "Missing --db DIR (the database folder), or --url http://host:port for a Chroma server."
        )
    if db.exists() and not db.is_dir():
        raise UserError(f"--db {str(db)!r} is a file; give a folder for the database.")
    if must_exist and not db.is_dir():
        raise UserError(f"No database at {str(db)!r}. Create one with `kvemb index PATH --db {db}`.")
    return KVStore(db, collection=collection, chunk_size=chunk_size)


# ------------------------------------------------------------------------------------------- index
def summary_table(summary: IndexSummary, collection: str) -> Table:
    """A rich table of an indexing run's summary."""
    table = Table(title=f"Indexed into {collection!r}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in (
        ("documents", summary.documents),
        ("chunks", summary.chunks),
        ("added", summary.added),
        ("unchanged", summary.unchanged),
        ("replaced", summary.replaced),
        ("removed", summary.removed),
        ("skipped files", len(summary.skipped_files)),
        ("chunks embedded", summary.chunks_embedded),
        ("time", f"{summary.seconds:.1f} s"),
    ):
        table.add_row(label, str(value))
    return table


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Files (.txt, .md, .jsonl) or folders (recursive).")],
    db: Annotated[
        Path | None, typer.Option("--db", help="Folder of the Chroma database (created if missing).")
    ] = None,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")] = "kvemb",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Hub name, local folder, .gguf file or bundled model; default the collection's model, else "
            f"$KVEMB_MODEL, else {DEFAULT_MODEL}.",
        ),
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size",
            min=16,
            help="Tokens per stored chunk, prompt included; default the collection's, else "
            f"{DEFAULT_CHUNK_SIZE} (measured, see docs/chunk-size.md).",
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", help="Longest text the engine embeds in one pass (default: 4096 or context)."),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(
            "--overlap", min=0, help="Tokens shared by consecutive chunks; default the collection's, else 0."
        ),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="kv, kv-ablation, last, mean, ...")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Chunks per forward pass.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="A Chroma server (http://host:port) instead of --db.")
    ] = None,
    ray: Annotated[
        int | None,
        typer.Option(
            "--ray",
            min=1,
            help="Embed with N Ray actors (Ray Data; $RAY_ADDRESS or a local cluster); needs the ray extra.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index files into a collection; each PATH is synchronised (vanished documents are removed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvemb_rag.sources import read_paths, sync_reads
    from kvemb_rag.store import IndexProgress, indexing_embedder

    with _user_errors():
        reads = read_paths(paths)  # before the model loads: path errors come first
        store = _open_store(db, collection, must_exist=False, url=url, chunk_size=chunk_size)
        try:
            settings = {"strategy": strategy, "max_length": max_length, "batch_size": batch_size, "device": device}
            store.embedder = indexing_embedder(store, model, **{k: v for k, v in settings.items() if v is not None})
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=not err.is_terminal,
            )
            with progress:
                docs_task = progress.add_task("Documents", total=sum(len(r.documents) for r in reads))
                chunks_task = progress.add_task("Chunks embedded", total=0)

                def update(event: IndexProgress) -> None:
                    progress.update(docs_task, completed=event.documents_done)
                    progress.update(chunks_task, completed=event.chunks_embedded, total=event.chunks_to_embed)

                summary = sync_reads(store, reads, overlap=overlap, progress=update, ray=_ray_config(ray))
        finally:
            store.close()
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        out.print(summary_table(summary, collection))


def _ray_config(actors: int | None) -> RayIndexConfig | None:
    if actors is None:
        return None
    from kvemb_rag.store.distributed import RayIndexConfig

    return RayIndexConfig(actors=actors)


# ------------------------------------------------------------------------------------------ serve
@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help=f"Model to serve; default $KVEMB_MODEL or {DEFAULT_MODEL}."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="KVEMB_API_KEY", help="Require 'Authorization: Bearer KEY' (401 else)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="The name clients pass as model (default --model).")
    ] = None,
    max_inputs: Annotated[int, typer.Option("--max-inputs", min=1, help="Strings per request.")] = 2048,
    max_tokens_per_input: Annotated[
        int, typer.Option("--max-tokens-per-input", min=1, help="Tokens per input (longer ones are refused).")
    ] = 8192,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Texts per engine call.")] = 64,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="Wait for more texts before an engine call.")
    ] = 5.0,
    strategy: Annotated[str, typer.Option("--strategy", help="kv, kv-ablation, last, mean, ...")] = "kv",
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Longest text per forward pass (default: 4096 or context).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Rows per forward pass.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")] = None,
) -> None:
    """Serve the model as an OpenAI-compatible embeddings API (POST /v1/embeddings); needs the serve extra."""
    from kvemb_rag.engine.embedder import KVEmbedder

    with _user_errors():
        try:
            from kvemb_rag.serve import ServeLimits, run_server
        except ImportError as exc:
            missing = f"kvemb serve needs FastAPI and uvicorn ({exc.name} is missing)"
            raise UserError(f'{missing}: pip install "kvemb-rag[serve]".') from exc
        limits = ServeLimits(max_inputs, max_tokens_per_input, max_batch, max_wait_ms)
        kwargs: dict[str, Any] = {"strategy": strategy, "max_length": max_length, "show_progress_bar": False}
        kwargs.update({k: v for k, v in (("batch_size", batch_size), ("device", device)) if v is not None})
        embedder = KVEmbedder(resolve_model(model or default_model()), **kwargs)
        name = served_model_name or model or default_model()
        run_server(embedder, host=host, port=port, model_name=name, api_key=api_key, limits=limits)


# ------------------------------------------------------------------------------------------ search
def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[: _SNIPPET_CHARS - 1] + "…"


def hits_table(hits: Sequence[Hit], title: str) -> Table:
    """A rich table of search hits (score, document, span, snippet)."""
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("span")
    table.add_column("snippet", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        span = f"{hit.start}-{hit.end} (chunk {hit.chunk_index})"
        # Ids repeat across sources (two folders' README.md): the source tells them apart.
        document = escape(hit.doc_id)
        if hit.source is not None:
            document += f"\n[dim]{escape(hit.source)}[/dim]"
        table.add_row(str(rank), f"{hit.score:.3f}", document, span, escape(_snippet(hit.text)))
    return table


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The search query.")],
    db: Annotated[Path | None, typer.Option("--db", help="Folder of the Chroma database.")] = None,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")] = "kvemb",
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")] = 5,
    per_document: Annotated[
        bool, typer.Option("--per-document", help="Best chunk per document, k documents.")
    ] = False,
    where: Annotated[
        str | None, typer.Option("--where", help='Chroma metadata filter as JSON, e.g. \'{"lang": "en"}\'.')
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="A Chroma server (http://host:port) instead of --db.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
) -> None:
    """Search a collection with the embedder it was built with."""
    with _user_errors():
        filters = None
        if where is not None:
            try:
                filters = json.loads(where)
            except json.JSONDecodeError as exc:
                raise UserError(f"--where is not valid JSON ({exc.msg}): {where!r}.") from exc
            if not isinstance(filters, dict):
                raise UserError(f"--where must be a JSON object, got {where!r}.")
        store = _open_store(db, collection, must_exist=True, url=url)
        try:
            store.info()  # fails fast on an unknown collection, before the model loads
            store.load_embedder(**({"device": device} if device else {}))
            hits = store.query(query, k, per_document=per_document, where=filters)
        finally:
            store.close()
    if as_json:
        print(
            json.dumps(
                {"query": query, "collection": collection, "hits": [h.to_dict() for h in hits]}, indent=2
            )
        )
    else:
        out.print(hits_table(hits, f"{query!r} in {collection!r}"))


# -------------------------------------------------------------------------------------------- info
@app.command()
def info(
    db: Annotated[Path | None, typer.Option("--db", help="Folder of the Chroma database.")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only this collection (default: all).")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="A Chroma server (http://host:port) instead of --db.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List collections with their sizes and embedder identities."""
    with _user_errors():
        store = _open_store(db, collection or "kvemb", must_exist=True, url=url)
        try:
            names = [collection] if collection else store.list_collections()
            infos = [store.info(name) for name in names]
        finally:
            store.close()
    if as_json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        out.print(f"No collections in {url or db}.")
    for item in infos:
        table = Table(title=f"Collection {item.name!r}", show_header=False, title_justify="left")
        table.add_column("key")
        table.add_column("value", overflow="fold")
        table.add_row("records (chunks)", str(item.records))
        table.add_row("documents", str(item.documents))
        table.add_row("space", str(item.space))
        for key, value in (item.identity or {"identity": "(none: not a kvemb-rag collection)"}).items():
            table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
        out.print(table)


# ------------------------------------------------------------------------------------------ layers
def _plot_curve(curve: Sequence[float], chosen: Sequence[int], skipped: int, model: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise UserError(
            'Plotting needs matplotlib: pip install "kvemb-rag[eval]" (or pip install matplotlib).'
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = list(range(len(curve)))
    ax.plot(xs, curve, marker="o", label="TwoNN intrinsic dimension")
    if skipped:
        ax.axvspan(-0.5, skipped - 0.5, color="grey", alpha=0.2, label="ignored (first layers)")
    picked = [i for i in chosen if i < len(curve)]
    ax.scatter(picked, [curve[i] for i in picked], color="red", zorder=3, s=60, label="re-routed layers")
    ax.set_xlabel("layer (input of decoder layer l)")
    ax.set_ylabel("intrinsic dimension")
    ax.set_title(f"Layer selection: {model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command()
def layers(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=f"Hub name, folder, .gguf file or bundled model; default $KVEMB_MODEL or {DEFAULT_MODEL}.",
        ),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot of the curve here.")] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Token limit (default: engine's).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show the intrinsic-dimension curve per layer and the layers KV-Embedding re-routes."""
    from kvemb_rag.engine.embedder import KVEmbedder

    with _user_errors():
        name = resolve_model(model or default_model())
        kwargs: dict[str, Any] = {"max_length": max_length}
        if device is not None:
            kwargs["device"] = device
        embedder = KVEmbedder(name, strategy="kv", layers="auto", **kwargs)
        selection = embedder.select_layers()
        curve = list(selection.id_curve)
        chosen = list(embedder.layers)
        id_window = list(selection.layers)
        fraction = embedder.config.selection.skip_fraction
        skipped = min(math.floor(fraction * len(curve)), max(len(curve) - 1, 0))
        if plot is not None:
            _plot_curve(curve, chosen, skipped, name, plot)
    if as_json:
        record = {
            "model": name,
            "id_curve": [None if math.isnan(v) else v for v in curve],
            "layers": chosen,
            "id_minimum_window": id_window,
        }
        print(json.dumps({**record, "ignored_layers": list(range(skipped))}, indent=2))
    else:
        table = Table(title=f"Intrinsic dimension per layer: {name}", title_justify="left")
        table.add_column("layer", justify="right")
        table.add_column("ID", justify="right")
        table.add_column("")
        for i, value in enumerate(curve):
            notes = ["re-routed"] if i in chosen else []
            notes += ["ID-minimum window"] if i in id_window else []
            notes += [f"ignored by the ID rule (first {fraction:.0%})"] if i < skipped else []
            table.add_row(str(i), "nan" if math.isnan(value) else f"{value:.2f}", ", ".join(notes))
        out.print(table)
        out.print(f"Re-routed layers ({embedder.config.selection.rule} rule): {chosen}; ID-minimum window: {id_window}")
    if plot is not None:
        err.print(f"Plot written to {plot}")


# -------------------------------------------------------------------------------------------- eval
def _comma_list(values: Sequence[str] | None, option: str) -> list[str]:
    """Repeated and comma-separated option values as one list (``-s kv,last -s mean``)."""
    items = [item.strip() for value in values or () for item in value.split(",")]
    if any(not item for item in items):
        raise UserError(f"{option} has an empty item in {list(values or ())!r}; separate values with single commas.")
    return items


def _positive_int(value: str, option: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"{option} takes positive integers (e.g. 256,512); got {value!r}.")
    return number


@app.command("eval")
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Model(s) to evaluate (repeat); default $KVEMB_MODEL or the default."
        ),
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategies",
            "--strategy",
            "-s",
            help="Strategies, comma-separated or repeated (kv,kv-ablation,last,...); default kv.",
        ),
    ] = None,
    sts: Annotated[list[Path] | None, typer.Option("--sts", help="STS file(s).")] = None,
    retrieval: Annotated[list[Path] | None, typer.Option("--retrieval", help="BEIR folder(s).")] = None,
    classification: Annotated[
        list[Path] | None, typer.Option("--classification", help="train.csv/test.csv folder(s).")
    ] = None,
    clustering: Annotated[
        list[Path] | None, typer.Option("--clustering", help="Clustering folder(s).")
    ] = None,
    long_docs: Annotated[
        list[Path] | None, typer.Option("--long-docs", help="Long-document (QMSum-style) folder(s).")
    ] = None,
    max_length: Annotated[
        list[str] | None,
        typer.Option(
            "--max-lengths",
            "--max-length",
            help="Long-document token limits, comma-separated or repeated (256,512).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="qrels split of the retrieval folders.")] = "test",
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Texts per forward pass.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the records as JSON here.")
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option("--plot-dir", help="Write long-document plots here.")
    ] = None,
) -> None:
    """Evaluate models and strategies on local datasets (the harness of kvemb_rag.evaluation)."""
    with _user_errors():
        try:
            from kvemb_rag.evaluation import markdown_table, run_evaluation, write_results_json
        except ImportError as exc:
            raise UserError(
                f'The evaluation harness needs extra packages ({exc.name}): pip install "kvemb-rag[eval]".'
            ) from exc
        kwargs: dict[str, Any] = {}
        lengths = _comma_list(max_length, "--max-lengths")
        if lengths:
            kwargs["max_lengths"] = tuple(_positive_int(v, "--max-lengths") for v in lengths)
        records = run_evaluation(
            [resolve_model(m) for m in (model or [default_model()])],
            tuple(_comma_list(strategy, "--strategies") or ("kv",)),
            sts=sts or (),
            retrieval=retrieval or (),
            classification=classification or (),
            clustering=clustering or (),
            long_docs=long_docs or (),
            engine_kwargs={"device": device} if device else None,
            split=split,
            batch_size=batch_size,
            plot_dir=plot_dir,
            progress=err.is_terminal,
            **kwargs,
        )
        if output is not None:
            write_results_json(records, output)
    print(markdown_table(records), end="")
    if output is not None:
        err.print(f"Records written to {output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``kvemb`` command line (the console-script entry point)."""
    app(args=list(argv) if argv is not None else None, prog_name="kvemb")


if __name__ == "__main__":  # pragma: no cover
    main()
