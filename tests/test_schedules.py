"""Distiller's AGP formula and the schedule helpers, against hand-computed values."""

from __future__ import annotations

import pytest

from unified.spec.schedules import (
    agp_span,
    agp_sparsity,
    linear_sparsity,
    pruning_epochs,
    sparsity_at_epoch,
    total_epochs,
)
from unified.spec.steps import Schedule


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


def test_a_schedule_with_one_pruning_epoch_is_rejected_unless_constant() -> None:
    Schedule(start_epoch=0, end_epoch=4)
    Schedule(start_epoch=0, end_epoch=1, curve="constant")
    with pytest.raises(ValueError, match="at least two pruning epochs"):
        Schedule(start_epoch=0, end_epoch=1)
    with pytest.raises(ValueError, match="at least two pruning epochs"):
        Schedule(start_epoch=2, end_epoch=6, frequency=4, curve="linear")


# --- Distiller LR schedulers as torch schedulers --------------------------------------------

STEP_LR = "torch.optim.lr_scheduler.StepLR"
EXP_LR = "torch.optim.lr_scheduler.ExponentialLR"


def test_lr_schedulers_step_only_in_their_policy_epochs() -> None:
    from unified.torchkit.training import scheduled_learning_rates

    # ExponentialLR stepped at the end of epochs 2..4 (Distiller: starting_epoch 2,
    # ending_epoch 5): epoch 3 is the first at 0.1 * 0.9
    rates = scheduled_learning_rates([(EXP_LR, {"gamma": 0.9}, [2, 3, 4])], 0.1, 7)
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.09, 0.081, 0.0729, 0.0729])


def test_two_lr_schedulers_share_one_optimizer_like_distiller() -> None:
    from unified.torchkit.training import scheduled_learning_rates

    rates = scheduled_learning_rates([
        (STEP_LR, {"step_size": 2, "gamma": 0.5}, range(6)),
        (EXP_LR, {"gamma": 0.1}, [4]),
    ], 1.0, 6)
    # StepLR halves after epochs 1 and 3; ExponentialLR divides by 10 after epoch 4
    assert rates == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.025])


@pytest.mark.parametrize(("scheduler", "message"), [
    (("torch.optim.lr_scheduler.ReduceLROnPlateau", {}, [0]), "validation metric"),
    (("torch.optim.lr_scheduler.OneCycleLR", {"max_lr": 0.1}, [0]), "OneCycleLR"),
])
def test_lr_schedulers_that_cannot_run_say_why(scheduler: tuple, message: str) -> None:
    from unified.torchkit.training import scheduled_learning_rates

    with pytest.raises(ValueError, match=message):
        scheduled_learning_rates([scheduler], 0.1, 3)


def test_training_loop_uses_the_rate_of_each_epoch() -> None:
    import numpy as np
    import torch

    from unified.spec.scenario import Budget
    from unified.torchkit import training

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    seen: list[float] = []
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.arange(8) % 3
    training.train(model, x, y, Budget(batch_size=4), epochs=3, lr=1.0, seed=0,
                   optimizer=optimizer, learning_rates=[0.3, 0.2, 0.1],
                   on_epoch_start=lambda _: seen.append(optimizer.param_groups[0]["lr"]))
    assert seen == [0.3, 0.2, 0.1]
