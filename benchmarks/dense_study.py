"""Per-model study of the dense default (issue 20): each setting one step away from ``kv``, with intervals.

Every configuration embeds the dev sets of :mod:`benchmarks.dev_eval` in bfloat16 (scores as float32 within
noise, ``docs/method.md`` "Precision and speed"), and is compared with the model's shipped ``kv`` default by a
95% paired bootstrap of the difference, per task family and on the dev average. On each model alone:

* the method's ablation and the shipped baselines (``kv-ablation``, ``prompteol``, ``echo``, ``mean``, ``last``);
* pooling with re-routing (``last``, ``mean`` against the default hybrid);
* the re-routing window: the paper's intrinsic-dimension rule (its window as the method study found it) and a
  window centred on the intrinsic-dimension *maximum* (natural texts, last token), against the middle window;
* asymmetric retrieval templates (a query-side template that asks for the passage) against PromptEOL's;
* post-processing of the default's vectors, with statistics of 256 calibration texts embedded the same way:
  centring (subtract their mean), and EmbedFilter-style removal of the output directions of the 16 most
  frequent calibration tokens (rows of the tied embedding matrix, orthonormalised).

Vectors are kept per configuration (``benchmarks/dense_study/vectors/``, not committed), so the study
resumes; results go to ``benchmarks/dense_study/<model>.json`` as each configuration finishes.

    nohup .venv/bin/python -m benchmarks.dense_study --model smollm2-135m-instruct --model gemma-3-270m \\
        > dense.log 2>&1 &
    .venv/bin/python -m benchmarks.dense_study --report
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.dev_eval import FAMILIES, compare, dev_data, embed_all, per_item

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "dense_study"
STUDY = ROOT / "benchmarks" / "method_study"
DTYPE = "bfloat16"
CALIBRATION = 256
FREQUENT = 16
ASYMMETRIC_QUERY = 'This search query : "{text}" looks for a passage that means in one word:"'
#: The product's default as the study names it, and the shipped baselines it must beat (the ablation as shipped:
#: centred like the default, less the re-routing).
DEFAULT = "kv centred"
BASELINES = ("kv-ablation centred", "prompteol", "echo", "mean", "last")
logger = logging.getLogger("dense_study")


def _window(width: int, centre: int, layers: int) -> list[int]:
    start = min(max(centre - (width - 1) // 2, 0), layers - width)
    return list(range(start, start + width))


def configs(model: str, default_layers: Sequence[int], num_layers: int) -> dict[str, dict[str, Any]]:
    """The configurations, as KVEmbedder settings (the default ``kv`` first)."""
    name = Path(model).name
    width = len(default_layers)
    curve = json.loads((STUDY / f"{name}.curves.json").read_text())["natural|last-leaving"]
    peak = int(np.nanargmax(np.asarray(curve, dtype=float)))
    variants = json.loads((STUDY / f"{name}.variants.json").read_text())["picks"]
    paper = variants["synthetic|last-leaving|paper (skip 0.2, window 0.1)"]["layers"]
    return {
        "kv": {},
        "kv-ablation": {"strategy": "kv-ablation"},
        "prompteol": {"strategy": "prompteol"},
        "echo": {"strategy": "echo"},
        "mean": {"strategy": "mean"},
        "last": {"strategy": "last"},
        "kv pooling=last": {"pooling": "last"},
        "kv pooling=mean": {"pooling": "mean"},
        "kv window=paper rule": {"layers": list(paper)},
        "kv window=id-max": {"layers": _window(width, peak, num_layers)},
        "kv asymmetric templates": {"query_template": ASYMMETRIC_QUERY},
    }


def _vectors_path(model: str, config: str) -> Path:
    return OUT_DIR / "vectors" / f"{Path(model).name}.{config.replace(' ', '_').replace('=', '-')}.npz"


def _calibration(emb: Any) -> dict[str, np.ndarray]:
    """Calibration statistics: the mean vector and the frequent tokens' output directions."""
    from kvemb_rag.engine.calibration import default_calibration_texts

    texts = default_calibration_texts(CALIBRATION, seed=1)
    vectors = emb.encode_document(texts)
    counts: dict[int, int] = {}
    for ids in emb.tokenizer(texts, add_special_tokens=False)["input_ids"]:
        for token in ids:
            counts[token] = counts.get(token, 0) + 1
    frequent = sorted(counts, key=lambda t: -counts[t])[:FREQUENT]
    rows = emb.model.get_input_embeddings().weight[frequent].float().detach().numpy()  # (K, H)
    basis, _ = np.linalg.qr(rows.T)  # (H, K) orthonormal
    return {"mean": vectors.mean(axis=0), "basis": basis, "frequent": np.asarray(frequent)}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


POST: dict[str, Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]] = {
    "centred": lambda x, c: _normalise(x - c["mean"]),
    "embedfilter": lambda x, c: _normalise(x - (x @ c["basis"]) @ c["basis"].T),
}


def run(models: Sequence[str], dev: dict[str, Any], only: Sequence[str] = ()) -> None:
    """Embed every configuration not saved yet, configuration by configuration across the models (so a
    stopped study has the same configurations for each model), writing the comparisons as it goes."""
    from kvemb_rag import KVEmbedder

    (OUT_DIR / "vectors").mkdir(parents=True, exist_ok=True)
    # Uncentred: centring is studied as a post-processing of the saved vectors ("<config> centred").
    bases = {m: KVEmbedder(m, dtype=DTYPE, centring=False, show_progress_bar=False) for m in models}
    tables = {m: configs(m, b.layers, b._loaded.num_layers) for m, b in bases.items()}
    for name in ["kv", *only] if only else tables[models[0]]:  # --only: in the order given
        for model, base in bases.items():
            path = _vectors_path(model, name)
            if path.exists():
                continue
            settings = tables[model][name]
            emb = base.with_options(**settings) if settings else base
            shared = ROOT / "benchmarks" / "dtype_study" / "vectors" / f"{Path(model).name}.{DTYPE}.npz"
            vectors = dict(np.load(shared)) if name == "kv" and shared.exists() else embed_all(emb, dev)
            vectors.update({f"calibration.{k}": v for k, v in _calibration(emb).items()})
            vectors["layers"] = np.asarray(emb.layers)
            _save(path, vectors)
            write(model, dev, tables[model])
    for model, base in bases.items():  # runs saved before every configuration kept its calibration
        for name, settings in tables[model].items():
            path = _vectors_path(model, name)
            if path.exists() and "calibration.mean" not in np.load(path).files:
                emb = base.with_options(**settings) if settings else base
                vectors = dict(np.load(path))
                vectors.update({f"calibration.{k}": v for k, v in _calibration(emb).items()})
                _save(path, vectors)
    for model in models:
        write(model, dev, tables[model])


def _save(path: Path, vectors: dict[str, np.ndarray]) -> None:
    np.savez(path.with_suffix(".tmp.npz"), **vectors)
    path.with_suffix(".tmp.npz").rename(path)


def _load(model: str, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """The saved vectors of the configurations ``names``, and each one's post-processings (``"<name> centred"``)."""
    loaded = {n: dict(np.load(_vectors_path(model, n))) for n in names if _vectors_path(model, n).exists()}
    for base in list(loaded):  # post-processing of every configuration with its own calibration statistics
        calibration = {k.split(".", 1)[1]: v for k, v in loaded[base].items() if k.startswith("calibration.")}
        if "mean" not in calibration:
            continue
        keys = [k for k in loaded[base] if not k.startswith("calibration.") and k not in ("seconds", "layers")]
        for suffix, transform in POST.items():
            post = {k: transform(loaded[base][k], calibration) for k in keys}
            loaded[f"{base} {suffix}"] = {**post, "layers": loaded[base]["layers"]}
    return loaded


def write(model: str, dev: dict[str, Any], table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compare every saved configuration with ``kv`` (written to ``<model>.json``)."""
    loaded = _load(model, list(table))
    if "kv" not in loaded:
        return {}
    out = OUT_DIR / f"{Path(model).name}.json"
    done = json.loads(out.read_text())["configs"] if out.exists() else {}
    kv_layers = [int(x) for x in loaded["kv"]["layers"]]
    if done.get("kv", {}).get("layers") != kv_layers:
        done = {}  # another default: every comparison is redone
    fresh = [n for n in loaded if n not in done or n == "kv"]
    items = {n: per_item(loaded[n], dev) for n in {"kv", "kv-ablation", *fresh} if n in loaded}
    result: dict[str, Any] = {"model": Path(model).name, "dtype": DTYPE, "configs": {}}
    for name in loaded:
        if name not in fresh:
            result["configs"][name] = done[name]
            continue
        entry = {
            "settings": table.get(name, {"post-processing of": name.rsplit(" ", 1)[0]}),
            "layers": [int(x) for x in loaded[name]["layers"]],
            "vs_kv": compare(items["kv"], items[name], dev),
        }
        if "kv-ablation" in items and name == "kv":
            entry["vs_ablation"] = compare(items["kv-ablation"], items["kv"], dev)
        result["configs"][name] = entry
    wanted = [DEFAULT, *BASELINES]
    if all(n in loaded for n in wanted):  # the product's default against every shipped baseline
        items.update({n: per_item(loaded[n], dev) for n in wanted if n not in items})
        result["default"] = {"name": DEFAULT, "vs": {b: compare(items[b], items[DEFAULT], dev) for b in BASELINES}}
    out.write_text(json.dumps(result, indent=1) + "\n")
    logger.info("%s: %d configurations written", model, len(loaded))
    return result


def report() -> str:
    """Per model: each configuration's family scores and its dev-average difference to ``kv`` with the interval."""
    lines: list[str] = []
    for path in sorted(OUT_DIR.glob("*.json")):
        r = json.loads(path.read_text())
        lines += [
            f"### {r['model']} ({r['dtype']})",
            "",
            "| configuration | layers | " + " | ".join(FAMILIES) + " | average | average - kv [95% CI] |",
            "|---|---|" + "---|" * (len(FAMILIES) + 2),
        ]
        for name, c in r["configs"].items():
            s = c["vs_kv"]
            cells = " | ".join(f"{s[f]['b']:.3f}" for f in FAMILIES)
            diff = s["average"]
            shown = "" if name == "kv" else f"{diff['diff']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
            lines.append(f"| {name} | {c['layers']} | {cells} | {diff['b']:.4f} | {shown} |")
        lines.append("")
        if "default" in r:
            lines += [
                f"Default ({r['default']['name']}) minus each baseline, dev average [95% CI]:",
                "",
                "| baseline | baseline average | default - baseline |",
                "|---|---|---|",
            ]
            for name, s in r["default"]["vs"].items():
                a = s["average"]
                lines.append(f"| {name} | {a['a']:.4f} | {a['diff']:+.4f} [{a['low']:+.4f}, {a['high']:+.4f}] |")
            lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="bundled name or path (repeatable)")
    parser.add_argument("--only", action="append", default=[], help="configurations to run (default all)")
    parser.add_argument("--report", action="store_true", help="print the tables of the saved runs")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="B - A per family with intervals, per --model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.compare:
        dev = dev_data()
        for model in args.model:
            base_names = [n.rsplit(" ", 1)[0] if n.endswith(tuple(POST)) else n for n in args.compare]
            loaded = _load(model, base_names)
            a, b = (per_item(loaded[n], dev) for n in args.compare)
            for family, s in compare(a, b, dev).items():
                print(
                    f"{Path(model).name} {family}: {s['a']:.4f} -> {s['b']:.4f} "
                    f"{s['diff']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]"
                )
        return
    if args.model:
        run(args.model, dev_data(), args.only)
    if args.report or not args.model:
        print(report())


if __name__ == "__main__":
    main()
