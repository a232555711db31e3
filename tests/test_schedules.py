"""Distiller's AGP formula and the schedule helpers, against hand-computed values."""

from __future__ import annotations

import pytest

from unified.schedules import (
    agp_span,
    agp_sparsity,
    linear_sparsity,
    pruning_epochs,
    schedule_problems,
    sparsity_at_epoch,
    total_epochs,
)
from unified.spec import Schedule


def test_agp_hand_computed_values() -> None:
    # span = ((4 - 0 - 1) // 1) * 1 = 3; target = 0.8 - 0.75 * (1 - e/3) ** 3
    kw = {"initial": 0.05, "final": 0.8, "start": 0, "end": 4, "frequency": 1}
    assert agp_span(start=0, end=4, frequency=1) == 3
    assert agp_sparsity(0, **kw) == pytest.approx(0.05)
    assert agp_sparsity(1, **kw) == pytest.approx(0.8 - 0.75 * 8 / 27)  # 0.577777...
    assert agp_sparsity(2, **kw) == pytest.approx(0.8 - 0.75 / 27)  # 0.772222...
    assert agp_sparsity(3, **kw) == pytest.approx(0.8)


def test_agp_with_frequency_and_clamping() -> None:
    # mobilenet AGP policy: 0.15 -> 0.50, epochs 0..20 every 2: span 18
    kw = {"initial": 0.15, "final": 0.5, "start": 0, "end": 20, "frequency": 2}
    assert agp_span(start=0, end=20, frequency=2) == 18
    assert agp_sparsity(9, **kw) == pytest.approx(0.5 - 0.35 * 0.5**3)
    assert agp_sparsity(18, **kw) == pytest.approx(0.5)
    assert agp_sparsity(-3, **{**kw, "start": 2}) == pytest.approx(0.15)  # before start
    assert agp_sparsity(50, **kw) == pytest.approx(0.5)  # after the last pruning epoch
    # odd span: start 4, end 16, frequency 2 -> span ((11) // 2) * 2 = 10, last epoch 14
    assert agp_span(start=4, end=16, frequency=2) == 10
    assert agp_sparsity(14, initial=0.05, final=0.67, start=4, end=16, frequency=2) == (
        pytest.approx(0.67)
    )


def test_agp_zero_span_is_an_error_like_distillers_assert() -> None:
    with pytest.raises(ValueError, match="span 0"):
        agp_sparsity(0, initial=0.1, final=0.5, start=0, end=1, frequency=1)
    with pytest.raises(ValueError, match="span 0"):
        agp_sparsity(0, initial=0.1, final=0.5, start=0, end=3, frequency=3)


def test_linear_curve_meets_agp_at_both_ends() -> None:
    kw = {"initial": 0.1, "final": 0.7, "start": 2, "end": 9, "frequency": 2}  # span 6
    assert linear_sparsity(2, **kw) == pytest.approx(0.1)
    assert linear_sparsity(5, **kw) == pytest.approx(0.4)
    assert linear_sparsity(8, **kw) == pytest.approx(0.7)
    assert agp_sparsity(8, **kw) == pytest.approx(0.7)


def test_pruning_epochs_and_total_epochs() -> None:
    schedule = Schedule(initial_sparsity=0.15, start_epoch=0, end_epoch=20, frequency=2)
    assert pruning_epochs(schedule) == list(range(0, 20, 2))
    assert total_epochs(schedule) == 20
    late = Schedule(start_epoch=4, end_epoch=16, frequency=2)
    assert pruning_epochs(late) == [4, 6, 8, 10, 12, 14]


def test_sparsity_during_each_epoch() -> None:
    schedule = Schedule(initial_sparsity=0.05, start_epoch=2, end_epoch=6, frequency=1)
    kw = {"initial": 0.05, "final": 0.8, "start": 2, "end": 6, "frequency": 1}
    during = [sparsity_at_epoch(schedule, 0.8, e) for e in range(9)]
    assert during[:2] == [0.0, 0.0]  # no mask before the first pruning epoch
    assert during[2] == pytest.approx(0.05)
    assert during[3] == pytest.approx(agp_sparsity(3, **kw))
    assert during[5] == pytest.approx(0.8)
    assert during[6:] == [pytest.approx(0.8)] * 3  # constant after the schedule
    assert during == sorted(during)


def test_sparsity_holds_between_pruning_epochs() -> None:
    schedule = Schedule(initial_sparsity=0.15, start_epoch=0, end_epoch=20, frequency=2)
    assert sparsity_at_epoch(schedule, 0.5, 3) == sparsity_at_epoch(schedule, 0.5, 2)
    assert sparsity_at_epoch(schedule, 0.5, 19) == pytest.approx(0.5)


def test_linear_and_constant_curves() -> None:
    linear = Schedule(initial_sparsity=0.2, start_epoch=0, end_epoch=5, curve="linear")
    assert [sparsity_at_epoch(linear, 0.6, e) for e in range(6)] == [
        pytest.approx(v) for v in (0.2, 0.3, 0.4, 0.5, 0.6, 0.6)
    ]
    constant = Schedule(start_epoch=1, end_epoch=2, curve="constant")
    assert [sparsity_at_epoch(constant, 0.3, e) for e in range(4)] == [0.0, 0.3, 0.3, 0.3]


def test_schedule_problems() -> None:
    assert schedule_problems(Schedule(start_epoch=0, end_epoch=4)) == []
    assert schedule_problems(Schedule(start_epoch=0, end_epoch=1, curve="constant")) == []
    # the Schedule validator runs the same check, so build one that skipped validation
    (problem,) = schedule_problems(Schedule.model_construct(start_epoch=0, end_epoch=1))
    assert "at least two pruning epochs" in problem
    with pytest.raises(ValueError, match="at least two pruning epochs"):
        Schedule(start_epoch=0, end_epoch=1)
