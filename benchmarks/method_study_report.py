"""Tables and plots of the method study (``benchmarks.method_study``, ``benchmarks.long_docs_study``).

Reads ``benchmarks/method_study/*.jsonl`` and writes ``benchmarks/method_study.md`` (every configuration per
model, the final comparison, the long-document curve), ``benchmarks/method_study/summary.json`` and two
plots: the intrinsic-dimension curve against the per-window scores, and long-document nDCG@10 against
length::

    .venv/bin/python -m benchmarks.method_study_report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.method_study import FAMILIES, OUT_DIR

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "method_study.md"
MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct", "gemma-3-270m": "Gemma-3-270M"}


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _pipe(text: str) -> str:
    """Escape ``|`` so a name stays in one table cell."""
    return text.replace("|", "\\|")


def config_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | configuration | layers | " + " | ".join(FAMILIES) + " | dev avg |",
        "|---|---|---|" + "---|" * len(FAMILIES) + "---|",
    ]
    for row in rows:
        layers = row["layers"]
        shown = f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else ", ".join(map(str, layers)) or "none"
        lines.append(
            f"| {row['stage']} | `{_pipe(row['config'])}` | {shown} | "
            + " | ".join(_fmt(row["families"][f]) for f in FAMILIES)
            + f" | **{row['dev_avg']:.3f}** |"
        )
    return "\n".join(lines)


#: The per-window sweep: PromptEOL's prompt, hybrid pooling, bias 1 (the default's settings but the layers).
SWEEP_PREFIX = "tpl=prompteol|pool=hybrid|layers="


def plot_layers(model: str, rows: list[dict[str, Any]], variants: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["config"].startswith(SWEEP_PREFIX) and "|bias=" not in r["config"]]
    if not sweep or not variants:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in variants["curves"].items():
        if name.startswith("synthetic|") or name == "natural|last-entering":
            ax.plot(range(len(curve)), curve, label=f"ID: {name}", alpha=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("intrinsic dimension (TwoNN)")
    twin = ax.twinx()
    xs = [float(np.mean(r["layers"])) for r in sweep]
    order = np.argsort(xs)
    twin.plot(np.array(xs)[order], np.array([r["dev_avg"] for r in sweep])[order], "ko-", label="dev avg, window")
    ablation = [r for r in rows if r["config"] == FINAL["kv-ablation"]]
    if ablation:
        twin.axhline(ablation[0]["dev_avg"], color="grey", linestyle="--", label="no re-routing")
    twin.set_ylabel("dev average of the re-routed window")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="best")
    ax.set_title(f"{MODELS.get(model, model)}: ID curve vs re-routing window score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_long_docs(rows: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({(r["strategy"], r["mode"]) for r in rows}):
        points = sorted((r["max_length"], r["ndcg@10"]) for r in rows if (r["strategy"], r["mode"]) == key)
        ax.plot(*zip(*points, strict=True), "o-" if key[1] == "truncate" else "s--", label=f"{key[0]} ({key[1]})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document token limit")
    ax.set_ylabel("nDCG@10")
    ax.set_title("QMSum val subset, SmolLM2-135M-Instruct")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def chance_ndcg(candidates: int) -> float:
    """Expected nDCG@10 of a random ranking with one relevant document among ``candidates``."""
    return float(np.mean([1 / np.log2(rank + 1) for rank in range(1, min(candidates, 10) + 1)])) * min(
        candidates, 10
    ) / candidates


def long_docs_table(rows: list[dict[str, Any]]) -> str:
    lengths = sorted({r["max_length"] for r in rows})
    lines = ["| strategy | mode | " + " | ".join(map(str, lengths)) + " |", "|---|---|" + "---|" * len(lengths)]
    for key in sorted({(r["strategy"], r["mode"]) for r in rows}):
        cells = {r["max_length"]: r["ndcg@10"] for r in rows if (r["strategy"], r["mode"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(_fmt(cells.get(n)) for n in lengths) + " |")
    return "\n".join(lines)


# The final comparison: the package default (PromptEOL's prompt, hybrid pooling, the middle window, bias 1), its
# no-re-routing ablation, and every baseline the package ships. PromptEOL's baseline is the same vectors as
# the PromptEOL prompt with last-token pooling and no re-routing.
DEFAULT_ROWS = {
    "smollm2-135m-instruct": "tpl=prompteol|pool=hybrid|layers=13-16",
    "gemma-3-270m": "tpl=prompteol|pool=hybrid|layers=8-9",
}
FINAL = {
    "kv (default)": None,
    "kv-ablation": "tpl=prompteol|no-reroute",
    "prompteol": "tpl=prompteol|no-reroute|pool=last",
    "echo": "baseline=echo",
    "mean": "baseline=mean",
    "last": "baseline=last",
    "kv with the paper's prompt and ID layers (before)": "tpl=compression|id-layers",
}


def final_table(by_model: dict[str, dict[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """Default vs ablation vs baselines: every family per model, and the two-model average."""
    header = "| strategy | " + " | ".join(
        f"{MODELS[m]} {f}" for m in by_model for f in (*FAMILIES, "dev avg")
    ) + " | both models |"
    lines = [header, "|---|" + "---|" * (len(by_model) * (len(FAMILIES) + 1) + 1)]
    table: dict[str, Any] = {}
    for label, config in FINAL.items():
        cells, averages = [], []
        for model, rows in by_model.items():
            row = rows.get(config or DEFAULT_ROWS[model])
            if row is None:
                cells += [""] * (len(FAMILIES) + 1)
                continue
            cells += [_fmt(row["families"][f]) for f in FAMILIES] + [f"**{row['dev_avg']:.3f}**"]
            averages.append(row["dev_avg"])
        both = float(np.mean(averages)) if len(averages) == len(by_model) else None
        table[label] = {"both_models": both, "configs": config}
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{_fmt(both)}** |")
    return "\n".join(lines), table


def main() -> None:
    sections = ["# Method study: every KV-Embedding decision measured on the real models\n",
                "Generated by `python -m benchmarks.method_study_report` from `benchmarks/method_study/*.jsonl`; "
                "the data, subsamples and stages are described in `benchmarks/method_study.py`.\n",
                "**Superseded for the defaults** by `benchmarks/dense_study.md` (issue 20): the whole STS-B dev, "
                "250 retrieval queries, paired 95% bootstrap intervals, each model alone, in bfloat16. These small "
                "samples (150 pairs, 35 queries) chose the prompt, the window and the bias; the dense study "
                "re-checked the window and the pooling per model, and added centring.\n"]
    summary: dict[str, Any] = {}
    for model in MODELS:
        rows = load_rows(OUT_DIR / f"{model}.jsonl")
        if not rows:
            continue
        variants_path = (OUT_DIR / f"{model}.jsonl").with_suffix(".variants.json")
        variants = json.loads(variants_path.read_text()) if variants_path.is_file() else {}
        plot = plot_layers(model, rows, variants, OUT_DIR / f"{model}-layers.png")
        sections.append(f"## {MODELS[model]}\n\n{config_table(rows)}\n")
        if plot:
            sections.append(f"![ID curve vs window score](method_study/{plot.name})\n")
        if variants:
            lines = ["| ID measured on | rule | layers | nearest window | its dev avg |", "|---|---|---|---|---|"]
            for name, pick in variants["picks"].items():
                curve, rule = name.rsplit("|", 1)
                layers, near = pick["layers"], pick["nearest_window"]
                lines.append(
                    f"| {_pipe(curve)} | {rule} | {layers[0]}–{layers[-1]} | {near[0]}–{near[-1]} | "
                    f"{pick['nearest_dev_avg']:.3f} |"
                )
            sections.append("Layer-selection variants and the layers each picks:\n\n" + "\n".join(lines) + "\n")
        summary[model] = rows
    by_model = {m: {r["config"]: r for r in rows} for m, rows in summary.items()}
    if by_model:
        text, table = final_table(by_model)
        sections.insert(2, "## The default against its ablation and every baseline (dev average)\n\n" + text + "\n")
        summary["final"] = table
    long_rows = load_rows(OUT_DIR / "long_docs.jsonl")
    if long_rows:
        plot = plot_long_docs(long_rows, OUT_DIR / "long-docs.png")
        sections.append(
            f"## Long documents (QMSum val subset: {long_rows[0]['meetings']} meetings, "
            f"{long_rows[0]['queries']} queries, nDCG@10)\n\n{long_docs_table(long_rows)}\n\n"
            f"A random ranking of {long_rows[0]['meetings']} meetings with one relevant scores "
            f"{chance_ndcg(long_rows[0]['meetings']):.3f} on average: every number here is at chance level.\n"
        )
        if plot:
            sections.append(f"![nDCG@10 vs length](method_study/{plot.name})\n")
        summary["long_docs"] = long_rows
    REPORT.write_text("\n".join(sections))
    (OUT_DIR / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
