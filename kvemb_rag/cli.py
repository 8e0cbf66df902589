"""The ``kvemb`` command line: index files into a Chroma store, search it, inspect it, and show layer choice.

Commands:

* ``kvemb index PATH... --db DIR`` -- ``.txt`` / ``.md`` / ``.jsonl`` files (folders recursively) into a
  collection; each PATH is synchronised (documents that vanished from it are removed);
* ``kvemb search "query" --db DIR`` -- ranked chunks (or documents with ``--per-document``);
* ``kvemb info --db DIR`` -- collections, sizes and embedder identities;
* ``kvemb layers --model M`` -- the intrinsic-dimension curve per layer and the chosen layers;
* ``kvemb eval --model M --retrieval DIR ...`` -- the evaluation harness (:mod:`kvemb_rag.evaluation`); with
  ``--search dense,lexical,hybrid`` retrieval is scored as users get it: each corpus indexed into a temporary
  store (its chunking, ``--chunk-size``) and searched per document in each mode (metrics ``ndcg@10/hybrid``...);
* ``kvemb serve --model M`` -- an OpenAI-compatible embeddings API (:mod:`kvemb_rag.serve`);
* ``kvemb index PATH... --url URL --ray N`` -- embedding on N Ray actors (:mod:`kvemb_rag.store.distributed`).

Errors kvemb-rag raises on purpose (:class:`kvemb_rag.KVEmbError`: a missing path, an unknown collection, an
embedder mismatch, a bad option...) print one message and exit with status 1 (2 for bad command-line usage);
``--verbose`` also prints their tracebacks. Any other exception is a bug and propagates with its traceback.

The commands only parse their options and print: ``kvemb index`` is one library call,
:func:`kvemb_rag.sources.index_paths` (reading the paths, the store choosing its embedder, synchronising each
path); the tables are :mod:`kvemb_rag.tables`.

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

from kvemb_rag.engine.models import DEFAULT_MODEL, default_model, resolve_model
from kvemb_rag.errors import ConfigError, KVEmbError
from kvemb_rag.store import DEFAULT_CHUNK_SIZE  # chromadb is imported when a store opens
from kvemb_rag.store.search import DEFAULT_MODE, SEARCH_MODES, check_mode
from kvemb_rag.tables import collection_table, hits_table, layers_table, summary_table

if TYPE_CHECKING:
    from kvemb_rag.store import KVStore
    from kvemb_rag.store.distributed import RayIndexConfig

__all__ = ["DEFAULT_MODEL", "app", "default_model", "main"]

logger = logging.getLogger(__name__)

# Exit status of user errors (typer/click use 2 for usage errors).
_EXIT_USER_ERROR = 1

# Options shared by several commands, declared once.
DbOption = Annotated[
    Path | None, typer.Option("--db", help="Folder of the Chroma database (`kvemb index` creates it).")
]
UrlOption = Annotated[str | None, typer.Option("--url", help="A Chroma server (http://host:port) instead of --db.")]
CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"Hub name, local folder, .gguf file or bundled model; default $KVEMB_MODEL, else {DEFAULT_MODEL}.",
    ),
]
StrategyOption = Annotated[str | None, typer.Option("--strategy", help="kv, kv-ablation, last, mean, ...")]
MaxLengthOption = Annotated[
    int | None,
    typer.Option("--max-length", help="Longest text the engine embeds in one pass (default: 4096 or context)."),
]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", help="Texts per forward pass.")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:0, ...")]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="float32, bfloat16 or float16; default bfloat16 where the hardware has it natively, else float32.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

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


@contextmanager
def _user_errors() -> Iterator[None]:
    """Print a :class:`~kvemb_rag.KVEmbError` on stderr and exit with status 1 (traceback with --verbose).

    Any other exception is a bug: it propagates with its traceback.
    """
    try:
        yield
    except KeyboardInterrupt:
        err.print("[red]Interrupted.[/red] Re-running the same command resumes where it stopped.")
        raise typer.Exit(130) from None
    except KVEmbError as exc:
        if _state["verbose"]:
            err.print_exception()
        err.print(f"[bold red]Error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(_EXIT_USER_ERROR) from None


def _given(**settings: Any) -> dict[str, Any]:
    """The engine settings whose options were given (not ``None``)."""
    return {key: value for key, value in settings.items() if value is not None}


@app.callback()
def _main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details and show tracebacks.")] = False,
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
            raise ConfigError("Give either --db (a local database folder) or --url (a Chroma server), not both.")
        return KVStore(url=url, collection=collection, chunk_size=chunk_size)
    if db is None:
        raise ConfigError("Missing --db DIR (the database folder), or --url http://host:port for a Chroma server.")
    if db.exists() and not db.is_dir():
        raise ConfigError(f"--db {str(db)!r} is a file; give a folder for the database.")
    if must_exist and not db.is_dir():
        raise ConfigError(f"No database at {str(db)!r}. Create one with `kvemb index PATH --db {db}`.")
    return KVStore(db, collection=collection, chunk_size=chunk_size)


# ------------------------------------------------------------------------------------------- index
@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Files (.txt, .md, .jsonl) or folders (recursive).")],
    db: DbOption = None,
    collection: CollectionOption = "kvemb",
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
    max_length: MaxLengthOption = None,
    overlap: Annotated[
        int | None,
        typer.Option("--overlap", min=0, help="Tokens shared by consecutive chunks; default the collection's, else 0."),
    ] = None,
    strategy: StrategyOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    url: UrlOption = None,
    ray: Annotated[
        int | None,
        typer.Option(
            "--ray",
            min=1,
            help="Embed with N Ray actors (Ray Data; $RAY_ADDRESS or a local cluster); needs the ray extra.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Index files into a collection; each PATH is synchronised (vanished documents are removed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvemb_rag.sources import index_paths
    from kvemb_rag.store import IndexProgress

    with _user_errors():
        settings = _given(strategy=strategy, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype)
        store = _open_store(db, collection, must_exist=False, url=url, chunk_size=chunk_size)
        try:
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=not err.is_terminal,
            )
            with progress:
                docs_task = progress.add_task("Documents", total=None)
                chunks_task = progress.add_task("Chunks embedded", total=0)

                def update(event: IndexProgress) -> None:
                    progress.update(docs_task, completed=event.documents_done, total=event.documents_total)
                    progress.update(chunks_task, completed=event.chunks_embedded, total=event.chunks_to_embed)

                summary = index_paths(
                    store, paths, model=model, overlap=overlap, progress=update, ray=_ray_config(ray), **settings
                )
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
    model: ModelOption = None,
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
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most texts per engine call.")] = 64,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, help="Wait for more texts before an engine call.")
    ] = 5.0,
    max_batch_tokens: Annotated[
        int,
        typer.Option(
            "--max-batch-tokens", min=1, help="Token budget per engine call (a longer single text runs alone)."
        ),
    ] = 16384,
    max_concurrent_requests: Annotated[
        int,
        typer.Option("--max-concurrent-requests", min=1, help="Embedding requests admitted at once; more get 429."),
    ] = 512,
    strategy: StrategyOption = None,
    max_length: MaxLengthOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
) -> None:
    """Serve the model as an OpenAI-compatible embeddings API (POST /v1/embeddings); needs the serve extra."""
    from kvemb_rag.engine.embedder import KVEmbedder

    with _user_errors():
        try:
            from kvemb_rag.serve import ServeLimits, run_server
        except ImportError as exc:
            missing = f"kvemb serve needs FastAPI, uvicorn and prometheus-client ({exc.name} is missing)"
            raise ConfigError(f'{missing}: pip install "kvemb-rag[serve]".') from exc
        limits = ServeLimits(
            max_inputs=max_inputs,
            max_tokens_per_input=max_tokens_per_input,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_batch_tokens=max_batch_tokens,
            max_concurrent_requests=max_concurrent_requests,
        )
        settings = _given(strategy=strategy, max_length=max_length, batch_size=batch_size, device=device)
        embedder = KVEmbedder(resolve_model(model or default_model()), show_progress_bar=False, **settings)
        name = served_model_name or model or default_model()
        run_server(embedder, host=host, port=port, model_name=name, api_key=api_key, limits=limits)


# ------------------------------------------------------------------------------------------ search
@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The search query.")],
    db: DbOption = None,
    collection: CollectionOption = "kvemb",
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Number of results.")] = 5,
    per_document: Annotated[bool, typer.Option("--per-document", help="Best chunk per document, k documents.")] = False,
    where: Annotated[
        str | None, typer.Option("--where", help='Chroma metadata filter as JSON, e.g. \'{"lang": "en"}\'.')
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help=f"{' | '.join(SEARCH_MODES)}: KV-Embedding and BM25 fused (default {DEFAULT_MODE}), or one leg.",
        ),
    ] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search a collection with the embedder it was built with (hybrid: KV-Embedding fused with BM25)."""
    with _user_errors():
        mode = check_mode(mode)
        filters = None
        if where is not None:
            try:
                filters = json.loads(where)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--where is not valid JSON ({exc.msg}): {where!r}.") from exc
            if not isinstance(filters, dict):
                raise ConfigError(f"--where must be a JSON object, got {where!r}.")
        store = _open_store(db, collection, must_exist=True, url=url)
        try:
            store.load_embedder(**_given(device=device, dtype=dtype))  # an unknown collection fails before it loads
            hits = store.query(query, k, per_document=per_document, where=filters, mode=mode)
        finally:
            store.close()
    if as_json:
        print(
            json.dumps(
                {
                    "query": query,
                    "collection": collection,
                    "mode": mode,
                    "hits": [h.to_dict() for h in hits],
                },
                indent=2,
            )
        )
    else:
        out.print(hits_table(hits, f"{query!r} in {collection!r}"))


# -------------------------------------------------------------------------------------------- info
@app.command()
def info(
    db: DbOption = None,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only this collection (default: all).")
    ] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
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
        out.print(collection_table(item))


# ------------------------------------------------------------------------------------------ layers
def _plot_curve(curve: Sequence[float], chosen: Sequence[int], skipped: int, model: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
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
    model: ModelOption = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot of the curve here.")] = None,
    max_length: MaxLengthOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the intrinsic-dimension curve per layer and the layers KV-Embedding re-routes."""
    from kvemb_rag.engine.embedder import KVEmbedder

    with _user_errors():
        name = resolve_model(model or default_model())
        embedder = KVEmbedder(name, strategy="kv", layers="auto", **_given(max_length=max_length, device=device))
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
        out.print(layers_table(curve, chosen, id_window, skipped, fraction, name))
        out.print(f"Re-routed layers ({embedder.config.selection.rule} rule): {chosen}; ID-minimum window: {id_window}")
    if plot is not None:
        err.print(f"Plot written to {plot}")


# -------------------------------------------------------------------------------------------- eval
def _comma_list(values: Sequence[str] | None, option: str) -> list[str]:
    """Repeated and comma-separated option values as one list (``-s kv,last -s mean``)."""
    items = [item.strip() for value in values or () for item in value.split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{option} has an empty item in {list(values or ())!r}; separate values with single commas.")
    return items


def _positive_int(value: str, option: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{option} takes positive integers (e.g. 256,512); got {value!r}.")
    return number


@app.command("eval")
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model(s) to evaluate (repeat); default $KVEMB_MODEL or the default."),
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
    clustering: Annotated[list[Path] | None, typer.Option("--clustering", help="Clustering folder(s).")] = None,
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
    search: Annotated[
        list[str] | None,
        typer.Option(
            "--search",
            help=f"Score --retrieval through a temporary store in these modes ({','.join(SEARCH_MODES)}), "
            "comma-separated or repeated; metrics are named per mode (ndcg@10/hybrid). Default: whole documents, "
            "exact search.",
        ),
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size",
            min=16,
            help=f"Tokens per stored chunk with --search, prompt included; default {DEFAULT_CHUNK_SIZE}.",
        ),
    ] = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the records as JSON here.")] = None,
    plot_dir: Annotated[Path | None, typer.Option("--plot-dir", help="Write long-document plots here.")] = None,
) -> None:
    """Evaluate models and strategies on local datasets (the harness of kvemb_rag.evaluation)."""
    with _user_errors():
        try:
            from kvemb_rag.evaluation import markdown_table, run_evaluation, write_results_json
        except ImportError as exc:
            raise ConfigError(
                f'The evaluation harness needs extra packages ({exc.name}): pip install "kvemb-rag[eval]".'
            ) from exc
        kwargs: dict[str, Any] = {}
        lengths = _comma_list(max_length, "--max-lengths")
        if lengths:
            kwargs["max_lengths"] = tuple(_positive_int(v, "--max-lengths") for v in lengths)
        modes = [check_mode(m) for m in _comma_list(search, "--search")]
        if modes and not retrieval:
            raise ConfigError("--search scores retrieval datasets; give --retrieval DIR (a BEIR folder) too.")
        if chunk_size is not None and not modes:
            raise ConfigError("--chunk-size applies to store search; give --search MODE too.")
        if modes:
            kwargs.update(search_modes=tuple(modes), chunk_size=chunk_size)
        records = run_evaluation(
            [resolve_model(m) for m in (model or [default_model()])],
            tuple(_comma_list(strategy, "--strategies") or ("kv",)),
            sts=sts or (),
            retrieval=retrieval or (),
            classification=classification or (),
            clustering=clustering or (),
            long_docs=long_docs or (),
            engine_kwargs=_given(device=device) or None,
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
