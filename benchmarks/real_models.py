"""The bundled real models: load time (first = GGUF conversion, then cached), peak memory, reference error.

Each measurement runs in a fresh process (so peak RSS is that load's own). The embeddings are compared with
the plain-tensor reference of the test-suite (``tests/test_engine_reference.py``) on the converted weights.

    python -m benchmarks.real_models --models smollm2-135m-instruct,gemma-3-270m --output benchmarks/real_models.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sat on the mat.", "Bread dough rises because yeast makes carbon dioxide.", "Paris is in France."]

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from kvemb_rag import KVEmbedder
imported = time.perf_counter() - t0
t1 = time.perf_counter()
emb = KVEmbedder(sys.argv[1], layers=[int(x) for x in sys.argv[2].split(",")])
loaded = time.perf_counter() - t1
result = {"import_s": round(imported, 2), "load_s": round(loaded, 2), "layers": list(emb.layers),
          "model_type": emb.model.config.model_type, "num_layers": emb.model.config.num_hidden_layers,
          "params_m": round(sum(p.numel() for p in emb.model.parameters()) / 1e6, 1),
          "weights": emb.identity["weights"], "folder": str(emb.model.config.name_or_path)}
emb.encode_document(["warm-up"])
status = open("/proc/self/status").read()
result["peak_rss_gib"] = round(int(status.split("VmHWM:")[1].split()[0]) / 2**20, 2)  # load + one encode
if len(sys.argv) > 3:
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from tests.test_engine_reference import Reference, _ids
    from pathlib import Path
    texts = json.loads(sys.argv[4])
    got = emb.encode_document(texts)
    want = Reference(Path(result["folder"])).embed(_ids(emb, texts), set(emb.layers), 1.0)
    result["max_abs_error_vs_reference"] = float(np.abs(got - want).max())
print(json.dumps(result))
"""


def run(model: str, layers: str, cache: str, reference: bool) -> dict[str, object]:
    args = [sys.executable, "-c", _CHILD, model, layers]
    if reference:
        args += [str(REPO), json.dumps(TEXTS)]
    env = {"KVEMB_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "real_models.json"))
    args = parser.parse_args()
    layers = {"smollm2-135m-instruct": "9,10,11", "gemma-3-270m": "5,6,7"}
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for model in args.models.split(","):
            first = run(model, layers.get(model, "2,3"), cache, reference=False)  # converts the GGUF file
            again = run(model, layers.get(model, "2,3"), cache, reference=True)  # from the converted copy
            results[model] = {"first_load": first, "cached_load": again}
            print(json.dumps({model: results[model]}), flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
