"""One training loop for every torch-based backend (fairness: same optimizer and budget)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unified.scenario import Budget, Optimizer

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
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` epochs; returns it (in train mode)."""
    opt = optimizer if optimizer is not None else make_optimizer(model.parameters(), budget, lr)
    set_seed(seed)
    for epoch in range(epochs):
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
