"""The jobs of a scenario beyond recipe × backend: the baselines a fair comparison needs and
the repeats of seed-dependent jobs (docs/architecture.md, "Fair baselines").

- **Matched baselines**: for every N > 0 that some recipe trains beyond the reference, one
  row ``fp32+ft<N>``: the reference fine-tuned N epochs by the shared torch loop (on the
  pytorch backend, the loop that trained the reference) under the same budget.
- **fp32 native baselines**: each backend's artifacts of the empty recipe, the yardstick of
  its native_ratio and deploy_ratio. A recipe with no step is that job; without one, a
  hidden job (``fp32+native``) runs it, kept out of the table.
- **Repeats**: with ``evaluate.repeats: N`` every trained or calibrated job (and matched
  baseline) runs N times, seed 0 being the scenario's own; repeats 1..N-1 are ordinary
  cached jobs whose records the row folds into mean ± std (unified.run.aggregate).

Every record is tagged (:func:`tag`) with what the aggregation needs: its role, seed, repeat
and matched baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unified.run.job import Job
from unified.spec.baselines import (
    MATCHED,
    MATCHED_BACKEND,
    NATIVE_BASELINE,
    matched_baselines,
    matched_name,
    repeat_seed,
    seed_dependent,
    training_epochs,
)
from unified.spec.scenario import Scenario
from unified.spec.steps import Recipe

Runnable = Callable[[Job], bool]  # whether a job's plan can run (supported, toolkit present)

ROLE_COMPRESSED, ROLE_FP32, ROLE_BASELINE = "compressed", "fp32", "baseline"


def all_recipes(view: Scenario, names: list[str] | None = None) -> dict[str, Recipe]:
    """The view's recipes (or those named) and the matched baselines they need, in row
    order: the matched baselines right after the first empty recipe (else first)."""
    chosen = {n: r for n, r in view.recipes.items() if names is None or n in names}
    matched = matched_baselines(chosen, view.budget)
    empty = next((n for n, r in chosen.items() if not r.steps), None)
    if empty is None:
        return {**matched, **chosen}
    out: dict[str, Recipe] = {}
    for name, recipe in chosen.items():
        out[name] = recipe
        if name == empty:
            out.update(matched)
    return out


def empty_recipe(view: Scenario) -> str | None:
    """The first recipe without steps: each backend's fp32 row."""
    return next((n for n, r in view.recipes.items() if not r.steps), None)


def expand(view: Scenario, recipes: list[str], backends: list[str], model: str,
           runnable: Runnable) -> list[Job]:
    """Every job of one single-model scenario for ``recipes`` × ``backends``: the rows, the
    matched baselines, the hidden fp32 native baselines and the repeats. Baselines and
    repeats are added only where ``runnable`` says their job can run."""
    rows = [Job(r, b, model) for r in recipes for b in backends]
    matched = [Job(n, MATCHED_BACKEND, model)
               for n in matched_baselines({r: view.recipes[r] for r in recipes}, view.budget)]
    matched = [j for j in matched if runnable(j)]
    hidden = []
    empty = empty_recipe(view)
    for backend in dict.fromkeys([*backends, *(j.backend for j in matched)]):
        if empty in recipes and backend in backends:
            continue  # the empty recipe's row is this backend's fp32 baseline
        native = Job(NATIVE_BASELINE, backend, model, hidden=True)
        if any(runnable(j) for j in [*rows, *matched] if j.backend == backend) \
                and runnable(native):
            hidden.append(native)
    repeats = []
    for job in [*rows, *matched]:
        if seed_dependent(recipe_of(view, job), view.budget) and runnable(job):
            repeats += [Job(job.recipe, job.backend, model, repeat=k)
                        for k in range(1, view.evaluate.repeats)]
    return [*rows, *matched, *hidden, *repeats]


def recipe_of(view: Scenario, job: Job) -> Recipe:
    """The recipe a job runs (a baseline's too)."""
    if job.recipe == NATIVE_BASELINE:
        return Recipe()
    return view.recipes.get(job.recipe) or all_recipes(view)[job.recipe]


def job_scenario(view: Scenario, job: Job) -> Scenario:
    """The scenario a job runs under: the view with the baselines among its recipes and the
    job's seed (a repeat's own)."""
    recipes = {**view.recipes, **all_recipes(view), job.recipe: recipe_of(view, job)}
    return view.model_copy(update={"recipes": recipes,
                                   "seed": repeat_seed(view.seed, job.repeat)})


def job_spec(view: Scenario, job: Job) -> dict[str, Any]:
    """What job.json says about the job (unified.run.job.job_from_spec reads it back): the
    scenario under the job's seed with the user's recipes only (baseline names are reserved
    there), and the job's own recipe spelled out."""
    scenario = view.model_copy(update={"seed": repeat_seed(view.seed, job.repeat)})
    return {"scenario": scenario.model_dump(mode="json"), "recipe": job.recipe,
            "steps": recipe_of(view, job).model_dump(mode="json"), "backend": job.backend,
            "repeat": job.repeat}


def role(view: Scenario, recipe: str) -> str:
    """``fp32`` (no step: the backend's yardstick), ``baseline`` (a matched fp32+ft<N>) or
    ``compressed``."""
    if MATCHED.match(recipe):
        return ROLE_BASELINE
    if recipe == NATIVE_BASELINE or not view.recipes[recipe].steps:
        return ROLE_FP32
    return ROLE_COMPRESSED


def matched_for(view: Scenario, recipe: str) -> str | None:
    """The matched baseline a compressed recipe's accuracy drop is measured against (None:
    the plain reference, for recipes that train nothing)."""
    if role(view, recipe) != ROLE_COMPRESSED:
        return None
    epochs = training_epochs(view.recipes[recipe], view.budget)
    return matched_name(epochs) if epochs else None


def tag(record: dict[str, Any], view: Scenario, job: Job) -> dict[str, Any]:
    """Put on ``record`` what the aggregation needs; returns it."""
    record.update(role=role(view, job.recipe), repeat=job.repeat,
                  seed=repeat_seed(view.seed, job.repeat),
                  matched_baseline=matched_for(view, job.recipe))
    return record
