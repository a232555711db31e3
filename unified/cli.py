"""The ``squeezelab`` command line.

Bad input: one line per problem on stderr (file:line: field: what is wrong), exit 2,
no traceback unless --debug.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

import unified
from unified.spec.errors import SpecError, SqueezelabError, did_you_mean, one_line, summarize
from unified.spec.scenario import OBJECTIVE_NAMES

EXIT_USAGE = 2


def _fail(lines: list[str]) -> NoReturn:
    for line in lines:
        # plain write: never wrapped to the terminal width; one problem is one line
        sys.stderr.write(f"squeezelab: error: {one_line(line, 1000)}\n")
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(unified.__version__, prog_name="squeezelab")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compare model compression toolkits on one model, one dataset, one yardstick."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.argument("scenario_file", type=click.Path(path_type=Path))
def validate(scenario_file: Path) -> None:
    """Check a scenario file and every recipe's plan on every backend."""
    from adapters.registry import get_adapter
    from unified.load.scenario_file import has_searchable_values, load_scenario

    if has_searchable_values(scenario_file):
        from unified.search.space import validation_lines

        for line in validation_lines(scenario_file):
            click.echo(line)
        return
    scenario = load_scenario(scenario_file)
    click.echo(f"{scenario_file}: valid scenario '{scenario.name}' "
               f"({len(scenario.recipes)} recipes × {len(scenario.backends)} backends)")
    for recipe_name, recipe in scenario.recipes.items():
        for backend in scenario.backends:
            plan = get_adapter(backend).plan(recipe)
            detail = plan.reason or "; ".join(plan.notes)
            click.echo(f"  {recipe_name} @ {backend}: {plan.status}"
                       + (f" ({detail})" if detail else ""))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (for editors)."""
    from unified.spec.scenario import Scenario

    click.echo(json.dumps(Scenario.model_json_schema(), indent=2))


@cli.command(name="list")
def list_backends() -> None:
    """Print the capability matrix and installed toolkit versions."""
    from unified.report.capability_matrix import backend_table, matrix_table

    console = wide_console()
    console.print(backend_table())
    console.print(matrix_table())


def _executor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--jobs, --executor and --ray-address, shared by run and regress."""
    command = click.option(
        "--ray-address", default=None, metavar="ADDR",
        help="With --executor ray: join this cluster (default: start a local one).")(command)
    command = click.option(
        "--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
        help="Where jobs run: warm local worker processes, or tasks on a Ray cluster "
             "(pip install 'squeezelab[ray]'). Latency is timed afterwards on this "
             "machine either way.")(command)
    return click.option(
        "--jobs", "-j", type=click.IntRange(min=1), default=None,
        help="Jobs at once (default: the number of cores; with ray: the cluster's CPUs).")(
        command)


@cli.command()
@click.argument("scenario_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<scenario>-<timestamp>).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache shared by all runs (default: ~/.cache/squeezelab).")
@_executor_options
@click.option("--timeout", type=click.FloatRange(min=1), default=None,
              help="Seconds one job may take (default: the scenario's evaluate.timeout).")
@click.option("--backend", "backends", multiple=True, help="Only these backends.")
@click.option("--recipe", "recipes", multiple=True, help="Only these recipes.")
@click.option("--no-cache", is_flag=True, help="Recompute every job.")
def run(scenario_file: Path, out: Path | None, cache_dir: Path | None, jobs: int | None,
        executor: str, ray_address: str | None, timeout: float | None,
        backends: tuple[str, ...], recipes: tuple[str, ...], no_cache: bool) -> None:
    """Run every recipe of SCENARIO_FILE on every backend and print the table."""
    from unified.load.checks import export_model_import_path
    from unified.load.scenario_file import load_scenario
    from unified.run.options import RunOptions, default_cache_dir

    scenario = load_scenario(scenario_file)
    export_model_import_path(scenario, scenario_file.parent)
    _check_filter("--backend", backends, scenario.backends)
    _check_filter("--recipe", recipes, tuple(scenario.recipes))
    _check_executor(executor, ray_address)
    if out is None:
        out = Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(out=out, cache_dir=cache_dir or default_cache_dir(), jobs=jobs,
                         timeout=timeout, backends=backends, recipes=recipes,
                         use_cache=not no_cache, executor=executor, ray_address=ray_address)
    records = _run_naming_the_file(scenario_file, scenario, options)
    from unified.report.console import print_results

    print_results(records, scenario.name)
    click.echo(f"run folder: {out}  (results.jsonl, results.csv)")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--max-accuracy-drop", type=float, default=None)
@click.option("--min-agreement", type=float, default=None)
@click.option("--minimize", multiple=True, type=click.Choice(list(OBJECTIVE_NAMES)),
              help="size: the deployable file against the same toolkit's fp32 one "
                   "(deploy_ratio); onnx_size, native_size: bytes.")
def select(run_dir: Path, max_accuracy_drop: float | None, min_agreement: float | None,
           minimize: tuple[str, ...]) -> None:
    """Recommend the best toolkit of a finished run (the scenario's select:, or flags)."""
    from unified.report.html import RunFolder
    from unified.report.select import recommend

    run = RunFolder(run_dir)
    updates: dict[str, Any] = {}
    if max_accuracy_drop is not None:
        updates["max_accuracy_drop"] = max_accuracy_drop
    if min_agreement is not None:
        updates["min_agreement"] = min_agreement
    if minimize:
        updates["minimize"] = minimize
    spec = run.scenario.select.model_copy(update=updates)
    for line in recommend(run.records, spec).lines():
        click.echo(line)


@cli.command()
@click.argument("scenario_file", type=click.Path(path_type=Path))
@click.option("--trials", type=click.IntRange(min=1), default=30, show_default=True,
              help="Trials to evaluate (a resumed search counts the ones it has).")
@click.option("--until-met", is_flag=True,
              help="Stop at the first trial that meets the constraints and every --target "
                   "(exit 1 if none does within --trials).")
@click.option("--target", "targets", multiple=True, metavar="METRIC=VALUE",
              help="A figure to reach: size=8 (size ratio ≥ 8), latency=1.5 (speedup ≥ "
                   "1.5), accuracy_drop=0.005, accuracy=0.98, agreement=0.99, native_size=4.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<scenario>-search-<timestamp>); an existing "
                   "search folder resumes.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache shared by all runs (default: ~/.cache/squeezelab).")
@_executor_options
@click.option("--timeout", type=click.FloatRange(min=1), default=None,
              help="Seconds one job may take (default: the scenario's evaluate.timeout).")
@click.option("--sampler", type=click.Choice(["tpe", "nsga2"]), default="tpe",
              show_default=True, help="Optuna's sampler (both handle several objectives).")
def search(scenario_file: Path, trials: int, until_met: bool, targets: tuple[str, ...],
           out: Path | None, cache_dir: Path | None, jobs: int | None, executor: str,
           ray_address: str | None, timeout: float | None, sampler: str) -> None:
    """Search recipe × backend × the searchable values of SCENARIO_FILE (Optuna); every
    trial is an ordinary job in the run folder. --jobs: trials at once (default 1)."""
    from unified.load.scenario_file import load_search_scenario
    from unified.run.options import Progress, RunOptions, default_cache_dir
    from unified.search.objectives import parse_target
    from unified.search.report import summary_lines, trial_line
    from unified.search.study import SearchOptions, run_search

    loaded = load_search_scenario(scenario_file)
    wanted = tuple(parse_target(t) for t in targets)
    _check_executor(executor, ray_address)
    if out is None:
        out = Path("runs") / f"{loaded.scenario.name}-search-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(out=out, cache_dir=cache_dir or default_cache_dir(), jobs=jobs or 1,
                         timeout=timeout, executor=executor, ray_address=ray_address)
    result = run_search(loaded, options, SearchOptions(
        trials=trials, until_met=until_met, targets=wanted, sampler=sampler, jobs=jobs or 1,
        on_trial=lambda entry, done: click.echo(trial_line(entry, done=done, total=trials))),
        Progress(on_stage=lambda msg: click.echo(f"-- {msg}")))
    for line in summary_lines(result.history):
        click.echo(line)
    click.echo(f"run folder: {out}  (results.jsonl, trials.json, study.db; "
               f"squeezelab report {out})")
    if until_met and result.history["first_meeting_targets"] is None:
        sys.exit(1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/summary.md."""
    from unified.report.html import write_report
    from unified.search.report import report_parts

    html_path, md_path = write_report(run_dir, *report_parts(run_dir))
    click.echo(f"wrote {html_path} and {md_path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown instead.")
def coverage(run_dir: Path, as_markdown: bool) -> None:
    """Rows of RUN_DIR by model × backend (ok / approximated / unsupported / failed) and the
    failure causes grouped."""
    from unified.report import coverage as cov
    from unified.report.html import RunFolder

    result = cov.coverage(RunFolder(run_dir).records)
    if as_markdown:
        click.echo(cov.markdown(result), nl=False)
        return
    console = wide_console()
    for table in cov.rich_tables(result):
        console.print(table)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def baseline(run_dir: Path, output: Path) -> None:
    """Record a finished run as a regression baseline."""
    from unified.report.html import RunFolder
    from unified.report.regress import make_baseline

    run = RunFolder(run_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(make_baseline(run.records, run.scenario.name), indent=2))
    click.echo(f"baseline of {len(run.records)} jobs written to {output}")


@cli.command()
@click.argument("scenario_file", type=click.Path(path_type=Path))
@click.option("--baseline", "baseline_file", type=click.Path(path_type=Path), default=None,
              help="Baseline JSON (default: the scenario's regress.baseline).")
@click.option("--tolerance", "tolerances", multiple=True, metavar="METRIC=VALUE",
              help="Override a tolerance, e.g. accuracy=0.02 (accuracy, agreement, "
                   "size_ratio, latency).")
@click.option("--spread", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With repeated rows: accuracy / agreement regress only beyond this many "
                   "standard deviations over seeds (default: the scenario's regress.spread).")
@click.option("--junit", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
@_executor_options
def regress(scenario_file: Path, baseline_file: Path | None, tolerances: tuple[str, ...],
            spread: float | None, junit: Path | None, out: Path | None,
            cache_dir: Path | None, jobs: int | None, executor: str,
            ray_address: str | None) -> None:
    """Rerun SCENARIO_FILE and compare with a baseline; exit 1 on any regression."""
    from unified.load.checks import export_model_import_path, tolerance_problems
    from unified.load.scenario_file import load_scenario
    from unified.report.regress import compare, load_baseline, write_junit
    from unified.run.options import RunOptions, default_cache_dir

    scenario = load_scenario(scenario_file)
    export_model_import_path(scenario, scenario_file.parent)
    if baseline_file is None:
        if scenario.regress.baseline is None:
            raise SqueezelabError(f"{scenario_file}: regress.baseline is not set; "
                                  "pass --baseline FILE")
        baseline_file = scenario_file.parent / scenario.regress.baseline
    base = load_baseline(baseline_file)
    tolerance = dict(scenario.regress.tolerance)
    for item in tolerances:
        metric, sep, value = item.partition("=")
        try:
            tolerance[metric] = float(value)
        except ValueError:
            raise SqueezelabError(f"--tolerance {item!r}: expected METRIC=NUMBER") from None
        if not sep:
            raise SqueezelabError(f"--tolerance {item!r}: expected METRIC=NUMBER")
        problems = tolerance_problems({metric: tolerance[metric]})
        if problems:
            raise SqueezelabError(f"--tolerance {item!r}: {problems[0][1]}")
    if out is None:
        out = Path("runs") / f"{scenario.name}-regress-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_executor(executor, ray_address)
    options = RunOptions(out=out, cache_dir=cache_dir or default_cache_dir(), jobs=jobs,
                         executor=executor, ray_address=ray_address)
    records = _run_naming_the_file(scenario_file, scenario, options)
    findings = compare(records, base, tolerance,
                       spread if spread is not None else scenario.regress.spread)
    if junit is not None:
        write_junit(junit, records, findings, f"squeezelab.{scenario.name}")
    regressions = [f for f in findings if f.regression]
    for f in findings:
        click.echo(f"{'REGRESSION' if f.regression else 'note'}: {f.job}: {f.metric}: "
                   f"{f.message}")
    click.echo(f"{len(regressions)} regression(s) in {len(records)} jobs against "
               f"{baseline_file}")
    sys.exit(1 if regressions else 0)


@cli.command(name="import-distiller")
@click.argument("schedule_file", type=click.Path(path_type=Path))
def import_distiller(schedule_file: Path) -> None:
    """Print a Distiller schedule YAML as a unified recipe (and what cannot be carried out)."""
    from unified.distiller.schedule import load_distiller_schedule, render_import

    click.echo(render_import(load_distiller_schedule(schedule_file)).rstrip())


def wide_console() -> Any:
    """A terminal keeps its width; a pipe or log file gets a table that is not squeezed."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=220)


def _check_filter(option: str, given: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    bad = [g for g in given if g not in allowed]
    if bad:
        raise SqueezelabError(f"{option} {bad[0]!r} is not in the scenario (allowed: "
                              f"{', '.join(allowed)}){did_you_mean(bad[0], allowed)}")


def _run_naming_the_file(scenario_file: Path, scenario: Any,
                         options: Any) -> list[dict[str, Any]]:
    """The run; a user error only the run finds (the checks found none) names the file."""
    try:
        from unified.report.console import run_with_progress

        return run_with_progress(scenario, options)
    except SqueezelabError as exc:
        named = [line if line.startswith(str(scenario_file)) else f"{scenario_file}: {line}"
                 for line in exc.lines()]
        raise SpecError(named) from None


def _check_executor(executor: str, ray_address: str | None) -> None:
    if ray_address is not None and executor != "ray":
        raise SqueezelabError("--ray-address needs --executor ray")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors → one line each, exit 2."""
    from unified.run.signals import RunStopped

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="squeezelab", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.stderr.write("squeezelab: aborted\n")
        sys.exit(130)
    except click.ClickException as exc:
        _fail([exc.format_message().replace("\n", " ")])
    except SqueezelabError as exc:
        if debug:
            raise
        _fail(exc.lines())
    except RunStopped as exc:  # Ctrl-C, SIGTERM, a full disk: what was kept, how to resume
        sys.stderr.write(f"squeezelab: {exc.message}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("squeezelab: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(f"squeezelab: internal error: {summarize(exc, 300)} "
                         "(run with --debug for the traceback)\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
