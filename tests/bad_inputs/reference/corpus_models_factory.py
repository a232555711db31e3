"""A factory that fails when called (after a clean import)."""

from torch import nn


def broken(num_classes: int = 10) -> nn.Module:
    raise TypeError(f"broken() cannot make a model with {num_classes} classes\nsecond line")
