"""What an adapter gets when a job runs (in its own worker process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unified.data.splits import DataSplits
from unified.spec.model_summary import ModelSummary
from unified.spec.scenario import Budget, Scenario
from unified.spec.steps import Recipe

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ReferenceArtifacts:
    """The fp32 reference every job starts from, produced once and cached."""

    folder: Path

    @property
    def weights(self) -> Path:  # torch state_dict, load with weights_only=True
        return self.folder / "weights.pt"

    @property
    def onnx(self) -> Path:  # the fp32 ONNX: the yardstick for ratios
        return self.folder / "model.onnx"

    @property
    def logits(self) -> Path:  # onnxruntime outputs of the fp32 ONNX on the test split
        return self.folder / "test_logits.npy"

    @property
    def data(self) -> Path:
        return self.folder / "data.npz"

    @property
    def summary(self) -> Path:  # reference.json: accuracy, bytes, latency ...
        return self.folder / "reference.json"

    @property
    def model_summary(self) -> Path:  # model_summary.json: layer types, parameters (planning)
        return self.folder / "model_summary.json"


@dataclass
class JobContext:
    scenario: Scenario
    recipe_name: str
    recipe: Recipe
    backend: str
    workdir: Path
    reference: ReferenceArtifacts
    data: DataSplits
    notes: list[str] = field(default_factory=list)
    # one dict per training epoch, e.g. {"epoch": 0, "sparsity": 0.31}; lands in the record
    epoch_log: list[dict[str, Any]] = field(default_factory=list)
    # the recipe's (Distiller) LR schedulers: None while no training loop asked for them,
    # True once one followed them, False when they could not run (noted)
    lr_schedule_applied: bool | None = None
    # the reference model's structure, for Adapter.plan (None: not known)
    model_summary: ModelSummary | None = None

    @property
    def budget(self) -> Budget:
        return self.scenario.budget

    @property
    def seed(self) -> int:
        return self.scenario.seed

    def note(self, message: str) -> None:
        """Record what the toolkit actually did (shown in the report's notes)."""
        if message not in self.notes:
            self.notes.append(message)

    def learning_rates(self, base_lr: float, epochs: int,
                       loop: str = "pruning") -> list[float] | None:
        """The lr of each epoch of a training loop on the Distiller schedule's timeline (its
        pruning loop, or its QAT epochs, both from the schedule's epoch 0) under the recipe's
        Distiller LR schedulers; None when it has none, or when they cannot run (noted)."""
        imported = self.scenario.imported.get(self.recipe_name)
        if imported is None or not imported.lr_schedulers or epochs <= 0:
            return None
        from unified.torchkit.training import scheduled_learning_rates

        schedulers = [(lr.torch_class, lr.args, lr.epochs) for lr in imported.lr_schedulers]
        labels = "; ".join(lr.label for lr in imported.lr_schedulers)
        try:
            rates = scheduled_learning_rates(schedulers, base_lr, epochs)
        except ValueError as exc:
            self.note(f"Distiller LR scheduler not applied ({labels}): {exc}")
            self.lr_schedule_applied = False
            return None
        self.lr_schedule_applied = True
        self.note(f"Distiller LR scheduler {labels} applied to the {epochs}-epoch {loop} loop: "
                  f"{describe_rates(rates)}")
        return rates

    def build_model(self, source: str) -> torch.nn.Module:
        """A freshly initialised model of ``source`` (seeded), shaped like the scenario's."""
        from unified.torchkit.models import build_model
        from unified.torchkit.training import set_seed

        set_seed(self.seed)
        return build_model(source, self.scenario.model.num_classes, self.scenario.model.input_shape)

    def reference_model(self) -> torch.nn.Module:
        """A fresh copy of the fp32 reference model with its weights, in eval mode."""
        import torch

        model = self.build_model(self.scenario.model.source)
        state = torch.load(self.reference.weights, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
        return model.eval()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.scenario.model.input_shape


def describe_rates(rates: list[float]) -> str:
    """'lr 0.01 (epochs 0-12), 0.009 (13), …' with runs of equal rates merged."""
    runs: list[tuple[float, int, int]] = []
    for epoch, rate in enumerate(rates):
        if runs and runs[-1][0] == rate:
            runs[-1] = (rate, runs[-1][1], epoch)
        else:
            runs.append((rate, epoch, epoch))
    parts = [f"{rate:.4g} ({first}-{last})" if last > first else f"{rate:.4g} ({first})"
             for rate, first, last in runs]
    if len(parts) > 6:
        parts = [*parts[:4], "…", parts[-1]]
    return "lr by epoch " + ", ".join(parts)
