"""Benchmark: what a search finds against the whole grid of the same space.

    python benchmarks/search_vs_grid.py [--scenario scenarios/search.yaml]
        [--search-dir DIR | --trials N] [--grid-dir DIR] [--out DIR] [--cache-dir DIR]

Runs ``squeezelab search`` on the scenario (or reads a finished search folder given with
``--search-dir``), then writes every combination of the scenario's searchable values as a
plain recipe (``grid.yaml``: the same model, data, budget, backends and select) and runs it
with ``squeezelab run``, as a user without the search would. Both are judged by the same
code (the search's constraints and objective, from ``select``): the script prints the grid's
size (settings × backends, and how many of those rows are supported), how many settings the
search evaluated, the best feasible row of each, and the ratio of the search's best to the
grid's on the first objective. ``--grid-dir`` reads a grid run folder instead of running
it (a run stopped early: the script says how many of the supported rows it holds).

Both share the cache (``--cache-dir``), so the grid reruns none of the search's jobs: the
figures compared are what each found, not how long each took on this shared machine; the
jobs each actually ran and their wall times are printed for what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unified.load.scenario_file import load_search_scenario  # noqa: E402
from unified.search.objectives import MEASURED, constraints, objectives  # noqa: E402
from unified.search.space import plan_space  # noqa: E402


def squeezelab(*args: str) -> float:
    """Run the CLI from this checkout (output shown); return its wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "ORT_DISABLE_TELEMETRY": os.environ.get("ORT_DISABLE_TELEMETRY", "1")}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "unified.cli", *args], cwd=ROOT, env=env)
    if result.returncode not in (0, 1):
        raise SystemExit(f"squeezelab {args[0]} exited with {result.returncode}")
    return time.monotonic() - start


def grid_document(scenario_file: Path) -> tuple[dict[str, Any], int]:
    """The scenario file with every combination of its searchable values as a plain recipe;
    and the number of settings (combinations, before backends)."""
    search = load_search_scenario(scenario_file)
    document = yaml.safe_load(scenario_file.read_text())
    recipes: dict[str, Any] = {}
    for space in search.spaces.values():
        if not space.params:
            recipes[space.name] = list(space.template)
            continue
        if space.size() is None:
            raise SystemExit(f"{space.name}: a continuous range has no grid; give it a step")
        for values in space.combinations():
            recipes[space.name_for(values)] = space.entries(values)
    document["name"] = f"{document.get('name', 'search')}-grid"
    document["recipes"] = recipes
    return document, len(recipes)


def judge(rows: list[dict[str, Any]], scenario_file: Path) -> dict[str, Any]:
    """The best feasible row by the search's own rules (constraints ≤ 0, then the first
    objective, then the smaller accuracy drop)."""
    select = load_search_scenario(scenario_file).scenario.select
    metric = objectives(select)[0]
    feasible = []
    for row in rows:
        if row.get("status") not in MEASURED:
            continue
        value = metric.read(row)
        if value is None or any(v > 0 for v in constraints(row, select).values()):
            continue
        feasible.append((value, row))
    feasible.sort(key=lambda p: ((-p[0] if metric.maximize else p[0]),
                                 p[1].get("accuracy_drop") or 0.0))
    best = feasible[0] if feasible else None
    return {"metric": metric, "feasible": len(feasible),
            "best": best[1] if best else None, "value": best[0] if best else None}


def describe(label: str, verdict: dict[str, Any]) -> str:
    row = verdict["best"]
    if row is None:
        return f"{label}: no feasible row"
    drop = row.get("accuracy_drop")
    return (f"{label}: {row['recipe']} @ {row['backend']}: {verdict['metric'].name} "
            f"{verdict['value']:.2f}×, accuracy drop {drop:+.4f} "
            f"({verdict['feasible']} feasible rows)")


def read_rows(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "search.yaml")
    parser.add_argument("--search-dir", type=Path, default=None,
                        help="a finished search folder (else one is run)")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--grid-dir", type=Path, default=None,
                        help="a grid run folder to read (else the grid is run)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "search-vs-grid")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    scenario = args.scenario.resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = ["--cache-dir", str(args.cache_dir.resolve())] if args.cache_dir else []

    search_dir = args.search_dir.resolve() if args.search_dir else out / "search"
    search_wall = None
    if args.search_dir is None:
        search_wall = squeezelab("search", str(scenario), "--trials", str(args.trials),
                                 "--out", str(search_dir), *cache)
    history = json.loads((search_dir / "trials.json").read_text())

    document, settings = grid_document(scenario)
    grid_file = out / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(document, sort_keys=False, width=100))
    grid_dir = args.grid_dir.resolve() if args.grid_dir else out / "grid"
    grid_wall = None
    if args.grid_dir is None:
        grid_wall = squeezelab("run", str(grid_file), "--out", str(grid_dir), *cache)

    grid_rows = read_rows(grid_dir)
    supported = [r for r in grid_rows if r.get("status") != "unsupported"]
    search_rows = [e["row"] for e in history["trials"] if e["row"]]
    ran = {"search": sum(not r.get("cached") for r in search_rows),
           "grid": sum(not r.get("cached") for r in supported)}
    grid, found = judge(grid_rows, scenario), judge(read_rows(search_dir), scenario)
    print()
    backends = len(document["backends"])
    print(f"space: {settings} settings × {backends} backends = {settings * backends} grid "
          f"rows ({len(grid_rows)} in the grid folder), of which the search's space (the "
          f"supported ones): {history['space']['size']}")
    print(f"search: {history['evaluated']} trials evaluated, {ran['search']} jobs computed, "
          + (f"{search_wall:.0f} s" if search_wall else "read from " + str(search_dir)))
    planned = plan_space(load_search_scenario(scenario)).size()
    print(f"grid:   {len(supported)} of the {planned} supported rows, {ran['grid']} jobs "
          f"computed (the rest from the shared cache), "
          + (f"{grid_wall:.0f} s" if grid_wall else "read from " + str(grid_dir)))
    print(describe("best of the grid  ", grid))
    print(describe("best of the search", found))
    if grid["value"] is not None and found["value"] is not None:
        metric = grid["metric"]
        ratio = found["value"] / grid["value"] if metric.maximize else \
            grid["value"] / found["value"]
        print(f"search / grid on {metric.name}: {ratio:.3f} (1 = the grid's best; the grid "
              f"beats the search by {max(0.0, 1 / ratio - 1) * 100:.1f} %)")


if __name__ == "__main__":
    main()
