"""What a run shows on the console: progress while it runs (a bar on a terminal, one line
per finished job and per stage in a log), then the results table."""

from __future__ import annotations

from typing import Any

import click


def print_results(records: list[dict[str, Any]], title: str) -> None:
    """The table; in a log (stdout not a terminal) 120 columns wide, then the notes."""
    from rich.console import Console

    from unified.report.table import LOG_WIDTH, legend, notes_lines, results_table

    console = Console()
    if console.is_terminal:
        console.print(results_table(records, title=title))
        for line in legend(records):
            console.print(line, highlight=False)
        return
    console = Console(width=LOG_WIDTH)
    models = list(dict.fromkeys(str(r["model"]) for r in records))
    for model in models:  # one table per model: no model column to squeeze in
        mine = [r for r in records if str(r["model"]) == model] if len(models) > 1 else records
        console.print(results_table(mine, title=f"{title}: {model}" if len(models) > 1
                                    else title, log=True))
    for line in legend(records, log=True):
        console.print(line, highlight=False)
    notes = notes_lines(records)
    if notes:
        click.echo("\nreasons and notes:")
        for line in notes:
            click.echo(line)


def run_with_progress(scenario: Any, options: Any) -> list[dict[str, Any]]:
    """Run with progress: on a terminal a bar, with a line above it per finished job; in a
    log the same lines, one per finished job, and one per stage (nothing redrawn)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from unified.report.table import job_line
    from unified.run.runner import Progress as Callbacks
    from unified.run.runner import Runner, count_jobs

    total = count_jobs(scenario, options)
    done = [0]
    if not Console().is_terminal:
        def log_done(job: Any, record: dict[str, Any]) -> None:
            done[0] += 1
            click.echo(job_line(job.label, record, done[0], total))

        callbacks = Callbacks(lambda msg: click.echo(f"-- {msg}"), on_done=log_done)
        return Runner(scenario, options, callbacks).run()
    running: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("planning", total=total)

        def on_stage(msg: str) -> None:
            bar.update(task, description=msg)

        def on_start(job: Any, _where: str) -> None:
            running.append(job.label)
            bar.update(task, description=f"running {', '.join(running)}")

        def on_done(job: Any, record: dict[str, Any]) -> None:
            if job.label in running:
                running.remove(job.label)
            done[0] += 1
            bar.console.print(job_line(job.label, record, done[0], total), highlight=False,
                              markup=False)
            bar.advance(task)
            bar.update(task, description=f"running {', '.join(running)}" if running
                       else "waiting")

        try:
            records = Runner(scenario, options, Callbacks(on_stage, on_start, on_done)).run()
        except BaseException:
            bar.live.transient = True  # leaving, the bar is erased: the error line stands alone
            raise
        bar.update(task, description="done")
    return records
