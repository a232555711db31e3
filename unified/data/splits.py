"""The data splits every backend shares (fairness: same samples for everyone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DataSplits:
    """Float32 NCHW arrays, already normalized; labels int64 or None (synthetic data).

    ``calib_x`` is a deterministic subset of ``train_x``.
    """

    train_x: np.ndarray
    train_y: np.ndarray | None
    calib_x: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray | None

    @property
    def labels(self) -> np.ndarray:
        """The train labels; training on unlabelled (synthetic) data is refused earlier, by
        the scenario validator, so their absence here is a bug."""
        if self.train_y is None:
            raise ValueError("this step trains, but the data has no labels")
        return self.train_y

    def save(self, path: Path) -> None:
        arrays = {"train_x": self.train_x, "calib_x": self.calib_x, "test_x": self.test_x}
        if self.train_y is not None and self.test_y is not None:
            arrays |= {"train_y": self.train_y, "test_y": self.test_y}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> DataSplits:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                train_x=z["train_x"],
                train_y=z.get("train_y", None),
                calib_x=z["calib_x"],
                test_x=z["test_x"],
                test_y=z.get("test_y", None),
            )
