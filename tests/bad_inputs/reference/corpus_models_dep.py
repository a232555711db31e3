"""A model module whose own dependency is not installed."""

import corpus_dependency_not_installed  # noqa: F401


def build() -> None:
    return None
