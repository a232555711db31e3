"""Model factories for the bad-input corpus: each is fine, the scenario names it wrongly."""

from torch import nn

WIDTH = 8  # not a factory


def build(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))


def not_a_model() -> str:
    return "resnet18"


def thousand_classes() -> nn.Module:
    """Ignores the scenario's num_classes: always 1000 logits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 1000))
