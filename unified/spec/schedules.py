"""Pruning schedules with Distiller's semantics (docs/architecture.md, "Pruning schedules").

A schedule acts on epochs ``range(start_epoch, end_epoch, frequency)`` (``end_epoch``
exclusive), exactly like a Distiller policy. At the start of each of those epochs the mask is
recomputed to the curve's target; between them, and after the last one, it stays as it is.
AGP is Distiller's ``AgpPruningRate.step``::

    span = ((end - start - 1) // frequency) * frequency
    target = final + (initial - final) * (1 - (epoch - start) / span) ** 3

so the first pruning epoch (``start``) prunes to ``initial`` and the last one
(``start + span``) reaches ``final``. The linear curve goes through the same two points;
the constant curve prunes to ``final`` at every pruning epoch (Distiller's one-shot pruners
under a policy).
"""

from __future__ import annotations

from unified.spec.steps import Schedule, ScheduleCurve, agp_span


def _progress(curve: str, epoch: int, start: int, end: int, frequency: int) -> float:
    """How far ``epoch`` is through the ramp: 0 at ``start``, 1 at the last pruning epoch."""
    span = agp_span(start=start, end=end, frequency=frequency)
    if span <= 0:
        raise ValueError(
            f"{curve} schedule start {start}, end {end}, frequency {frequency} has span {span}: "
            "it needs end - start - 1 >= frequency (at least two pruning epochs)"
        )
    return min(max(epoch - start, 0), span) / span


def agp_sparsity(
    epoch: int, *, initial: float, final: float, start: int, end: int, frequency: int
) -> float:
    """The AGP target sparsity for ``epoch``, as Distiller computes it.

    Epochs before ``start`` give ``initial``; epochs after the last pruning epoch
    (``start + span``) give ``final``. Raises ValueError when the span is 0 (Distiller's
    ``assert span > 0``): the schedule has a single pruning epoch, nothing to ramp over.
    """
    progress = _progress("AGP", epoch, start, end, frequency)
    return _clean(final + (initial - final) * (1.0 - progress) ** 3)


def linear_sparsity(
    epoch: int, *, initial: float, final: float, start: int, end: int, frequency: int
) -> float:
    """Linear ramp from ``initial`` (at ``start``) to ``final`` (at the last pruning epoch)."""
    progress = _progress("linear", epoch, start, end, frequency)
    return _clean(initial + (final - initial) * progress)


def _clean(sparsity: float) -> float:
    """Drop float noise: 0.5 + (0.1 - 0.5) * 1.0 is 0.09999999999999998, and toolkits that
    floor ratio × count (NNI, Distiller itself) would prune 1 of 20 channels instead of 2."""
    return round(sparsity, 12)


def pruning_epochs(schedule: Schedule) -> list[int]:
    """Epochs at whose start the mask is updated: ``range(start, end, frequency)``."""
    return list(range(schedule.start_epoch, schedule.end_epoch, schedule.frequency))


def total_epochs(schedule: Schedule) -> int:
    """Training epochs needed to carry the schedule out: epochs ``0 .. end_epoch - 1``."""
    return schedule.end_epoch


def target_sparsity(schedule: Schedule, final_sparsity: float, epoch: int) -> float:
    """The curve's target at ``epoch`` (meaningful at pruning epochs)."""
    kwargs = {
        "initial": schedule.initial_sparsity,
        "final": final_sparsity,
        "start": schedule.start_epoch,
        "end": schedule.end_epoch,
        "frequency": schedule.frequency,
    }
    if schedule.curve is ScheduleCurve.agp:
        return agp_sparsity(epoch, **kwargs)  # type: ignore[arg-type]
    if schedule.curve is ScheduleCurve.linear:
        return linear_sparsity(epoch, **kwargs)  # type: ignore[arg-type]
    return final_sparsity


def sparsity_at_epoch(schedule: Schedule, final_sparsity: float, epoch: int) -> float:
    """The sparsity the mask has DURING training epoch ``epoch``.

    That is the target of the latest pruning epoch ``<= epoch`` (pruning happens at the
    epoch's start); 0.0 before the first pruning epoch (no mask yet, as in Distiller);
    constant after the schedule ends.
    """
    done = [p for p in pruning_epochs(schedule) if p <= epoch]
    if not done:
        return 0.0
    return target_sparsity(schedule, final_sparsity, done[-1])
