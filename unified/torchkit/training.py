"""One training loop for every torch-based backend (fairness: same optimizer and budget)."""

from __future__ import annotations

import importlib
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unified.spec.scenario import Budget, Optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    params: Iterator[nn.Parameter] | list[nn.Parameter],
    budget: Budget,
    lr: float,
    optimizer_class: OptimizerFactory | None = None,
) -> torch.optim.Optimizer:
    """The budget's optimizer. ``optimizer_class`` lets NNI pass its ``nni.trace``d class."""
    if budget.optimizer is Optimizer.adam:
        cls: OptimizerFactory = optimizer_class or torch.optim.Adam
        return cls(params, lr=lr, weight_decay=budget.weight_decay)
    sgd: OptimizerFactory = optimizer_class or torch.optim.SGD
    return sgd(params, lr=lr, momentum=budget.momentum, weight_decay=budget.weight_decay)


def cross_entropy(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches; the order depends only on (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx]).long()


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    budget: Budget,
    *,
    epochs: int,
    lr: float,
    seed: int,
    loss_fn: LossFn = cross_entropy,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[], None] | None = None,
    learning_rates: Sequence[float] | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` epochs; returns it (in train mode).
    ``learning_rates[e]``, when given, is the learning rate of epoch ``e``."""
    opt = optimizer if optimizer is not None else make_optimizer(model.parameters(), budget, lr)
    set_seed(seed)
    for epoch in range(epochs):
        set_learning_rate(opt, learning_rates, epoch)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        for xb, yb in batches(x, y, budget.batch_size, seed, epoch):
            opt.zero_grad()
            loss = loss_fn(model(xb), xb, yb)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return model


def set_learning_rate(optimizer: Any, learning_rates: Sequence[float] | None,
                      epoch: int) -> None:
    """Set every param group's lr to ``learning_rates[epoch]`` (if there is one)."""
    if learning_rates is not None and epoch < len(learning_rates):
        for group in optimizer.param_groups:
            group["lr"] = learning_rates[epoch]


def scheduled_learning_rates(
    schedulers: Sequence[tuple[str, dict[str, Any], Sequence[int]]], base_lr: float, epochs: int
) -> list[float]:
    """The learning rate of each of ``epochs`` epochs under torch LR schedulers stepped as
    Distiller's LRPolicy does: all built on one optimizer (lr ``base_lr``), each stepped at
    the end of the epochs its policy lists. ``schedulers``: (torch class path, constructor
    arguments, policy epochs). Raises ValueError for a scheduler that cannot run this way."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)  # CyclicLR cycles momentum
    built = []
    for class_path, args, policy_epochs in schedulers:
        module_name, _, class_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        if cls is torch.optim.lr_scheduler.ReduceLROnPlateau:
            raise ValueError("ReduceLROnPlateau steps on a validation metric each epoch, which "
                             "the shared training loop does not compute")
        try:
            built.append((cls(optimizer, **args), set(policy_epochs)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{class_name}({args}): {exc}") from None
    rates = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended
        warnings.simplefilter("ignore", UserWarning)
        for epoch in range(epochs):
            rates.append(float(optimizer.param_groups[0]["lr"]))
            for scheduler, stepped in built:
                if epoch in stepped:
                    scheduler.step()
    return rates


def kd_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """Hinton's KD: alpha * T² * KL(soft student || soft teacher) + (1 - alpha) * CE."""
    teacher.eval()

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = F.softmax(teacher(x) / temperature, dim=1)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean"
        )
        return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(logits, y)

    return loss


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval mode) on every row of ``x``."""
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())
