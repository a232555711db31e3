"""What an adapter gets when a job runs (in its own worker process)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unified.data.splits import DataSplits
from unified.measure.outputs import rel_l2
from unified.spec.layers import LayerInfo, StepTargets, load_inventory
from unified.spec.model_summary import ModelSummary
from unified.spec.scenario import Budget, Scenario
from unified.spec.steps import Recipe, Step

if TYPE_CHECKING:
    import torch

    from unified.measure.native import NativeFiles


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

    @property
    def layers(self) -> Path:  # layers.json: the conv/linear layers in execution order
        return self.folder / "layers.json"

    def layer_inventory(self) -> list[LayerInfo]:
        """The reference model's layers (unified.spec.layers), as the reference stage found
        them."""
        return load_inventory(self.layers)


PARITY_MIN_AGREEMENT = 0.99  # native vs ONNX top-1 agreement below this: the export changed it


@dataclass(frozen=True)
class Parity:
    """How faithful the ONNX is to the native artifact, where the native runtime runs here.

    The ONNX is faithful when it picks the native model's top-1 class on at least
    ``PARITY_MIN_AGREEMENT`` of the inputs, or, failing that, when the conversion moved the
    outputs less than the compression itself did (``onnx_rel_l2`` ≤ ``compression_rel_l2``):
    two int8 runtimes round differently (requantization, hard-swish, a float op between
    QDQ pairs), and on a model with small logit margins that flips classes although neither
    runtime is wrong. An export that breaks the model (a wrong layout, reversed classes)
    moves the outputs far more than the compression did."""

    native: str  # what ran natively: "torch", "the TFLite interpreter" ...
    agreement: float  # share of inputs whose top-1 class is the same in both
    max_abs: float  # largest absolute difference of the logits
    samples: int
    onnx_rel_l2: float | None = None  # the ONNX's distance from the native outputs
    compression_rel_l2: float | None = None  # the native outputs' distance from fp32's

    @property
    def within_compression_error(self) -> bool:
        return (self.onnx_rel_l2 is not None and self.compression_rel_l2 is not None
                and self.onnx_rel_l2 <= self.compression_rel_l2)

    @property
    def faithful(self) -> bool:
        return self.agreement >= PARITY_MIN_AGREEMENT or self.within_compression_error

    def _distances(self) -> str:
        if self.onnx_rel_l2 is None or self.compression_rel_l2 is None:
            return ""
        return (f"; rel_l2 of the ONNX from the {self.native} model {self.onnx_rel_l2:.3g}, "
                f"of the {self.native} model from fp32 {self.compression_rel_l2:.3g}")

    def failure(self) -> str:
        """The reason of a row whose export changed the model."""
        return (f"export changed the model: the ONNX agrees with the {self.native} model on "
                f"the top-1 class of {self.agreement:.1%} of {self.samples} test inputs "
                f"(below {PARITY_MIN_AGREEMENT:.0%}; max |logit difference| "
                f"{self.max_abs:.3g}{self._distances()})")

    def tolerance_note(self) -> str:
        """The note of a faithful row whose top-1 classes still differ on some inputs."""
        return (f"the ONNX agrees with the {self.native} model on the top-1 class of "
                f"{self.agreement:.1%} of {self.samples} test inputs{self._distances()}: "
                "the conversion moved the outputs less than the compression did (the two "
                "runtimes round differently), so the row's figures are the ONNX's")


SPARSITY_DIGITS = 6  # epoch_log sparsities and targets are rounded to this many digits


@dataclass(frozen=True)
class EpochEntry:
    """One epoch of a training loop that a recipe step ran, as the record's ``epoch_log``
    keeps it: every backend writes the same keys, rounded the same way."""

    step: int  # the recipe step that trained, counted from 1 (several may share one loop)
    kind: str  # what the loop did: prune, finetune, qat, distill ...
    epoch: int | None  # epoch of that loop from 0 (None: a one-shot mask, no training epoch)
    sparsity: float | None = None  # share of zeros in the weights the step targets
    target: float | None = None  # the sparsity the step's schedule asks for at this epoch

    def as_record(self) -> dict[str, Any]:
        """The JSON form: all five keys, sparsities rounded to ``SPARSITY_DIGITS``."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, SPARSITY_DIGITS)

        return {"step": self.step, "kind": self.kind, "epoch": self.epoch,
                "sparsity": rounded(self.sparsity), "target": rounded(self.target)}


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
    # one entry per training epoch of each step (log_epoch); lands in the record
    epoch_log: list[EpochEntry] = field(default_factory=list)
    # the recipe's (Distiller) LR schedulers: None while no training loop asked for them,
    # True once one followed them, False when they could not run (noted)
    lr_schedule_applied: bool | None = None
    # the reference model's structure, for Adapter.plan (None: not known)
    model_summary: ModelSummary | None = None
    # each step's layers, resolved once by the job (unified.spec.layers); None: no targets
    targets: list[StepTargets | None] = field(default_factory=list)
    # what the toolkit did instead of what was asked, found while it ran (deviate)
    deviations: list[str] = field(default_factory=list)
    # the layers each step really changed, as the adapter reports them (report_changed)
    changed: dict[int, list[str]] = field(default_factory=dict)
    parity: Parity | None = None

    def __post_init__(self) -> None:
        if not self.targets and self.recipe.steps and self.reference.layers.is_file():
            from unified.spec.layers import resolve_recipe

            self.targets = resolve_recipe(self.recipe.steps, self.reference.layer_inventory())

    @property
    def targets_resolved(self) -> bool:
        """Whether each step's layers were resolved (False: no layer inventory was at hand,
        the adapter falls back on the step's patterns)."""
        return bool(self.targets)

    @property
    def budget(self) -> Budget:
        return self.scenario.budget

    @property
    def seed(self) -> int:
        return self.scenario.seed

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch: batches of the budget's size, the last one
        possibly short."""
        return math.ceil(len(self.data.train_x) / self.budget.batch_size)

    def note(self, message: str) -> None:
        """Record what the toolkit actually did (shown in the report's notes)."""
        if message not in self.notes:
            self.notes.append(message)

    def deviate(self, message: str) -> None:
        """Record that the toolkit did something other than the recipe asked (the row becomes
        ``approximated``, ``message`` says what was done instead)."""
        self.note(message)
        if message not in self.deviations:
            self.deviations.append(message)

    def step_index(self, step: Step) -> int:
        """The position of ``step`` (the object from ``recipe.steps``) in the recipe."""
        for index, candidate in enumerate(self.recipe.steps):
            if candidate is step:
                return index
        raise ValueError(f"{step.kind} step is not a step of recipe {self.recipe_name!r}")

    def layers_for(self, step: Step | int) -> tuple[str, ...]:
        """The torch module names a step acts on, resolved once for every backend (empty for
        a step without targets)."""
        index = step if isinstance(step, int) else self.step_index(step)
        resolved = self.targets[index] if index < len(self.targets) else None
        return () if resolved is None else resolved.layers

    def left_out(self, step: Step | int) -> dict[str, str]:
        """Layers the step's patterns select but a default leaves out: name -> why."""
        index = step if isinstance(step, int) else self.step_index(step)
        resolved = self.targets[index] if index < len(self.targets) else None
        return {} if resolved is None else dict(resolved.left_out)

    def report_changed(self, step: Step | int, names: list[str] | tuple[str, ...]) -> None:
        """Record the layers a step really changed (torch module names). A targeted layer the
        toolkit left as it was makes the row ``approximated``."""
        index = step if isinstance(step, int) else self.step_index(step)
        self.changed[index] = list(dict.fromkeys([*self.changed.get(index, []), *names]))

    def check_parity(self, native: str, native_logits: Any, onnx_logits: Any) -> Parity:
        """Compare the native artifact's logits with its ONNX's on the first test inputs; the
        job fails the row when the ONNX is not faithful (:class:`Parity`)."""
        a = np.asarray(native_logits, dtype=np.float64).reshape(len(native_logits), -1)
        b = np.asarray(onnx_logits, dtype=np.float64).reshape(len(onnx_logits), -1)
        onnx_distance = compression = None
        if a.size and self.reference.logits.is_file():
            fp32 = np.load(self.reference.logits).astype(np.float64)
            fp32 = fp32.reshape(len(fp32), -1)[: len(a)]
            if fp32.shape == a.shape:  # the parity inputs are the test split's first ones
                onnx_distance, compression = rel_l2(b, a), rel_l2(a, fp32)
        parity = Parity(native, float(np.mean(a.argmax(1) == b.argmax(1))),
                        float(np.abs(a - b).max()) if a.size else 0.0, len(a),
                        onnx_distance, compression)
        self.parity = parity
        if parity.faithful and parity.agreement < PARITY_MIN_AGREEMENT:
            self.note(parity.tolerance_note())
        return parity

    def log_epoch(self, index: int, kind: str, epoch: int | None, *,
                  sparsity: float | None = None, target: float | None = None) -> None:
        """Record one epoch of the training loop of the recipe's step ``index`` (from 0):
        what the loop did (``kind``), the sparsity reached and the schedule's target."""
        self.epoch_log.append(EpochEntry(index + 1, kind, epoch, sparsity, target))

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

    def torchscript_timing(self, model: torch.nn.Module) -> NativeFiles | None:
        """TorchScript of ``model`` and of the reference (``native.ts``,
        ``native_reference.ts``): the pair the latency pass times in the toolkit's own
        runtime. None, with a note, when either cannot be traced or takes no float32 input."""
        import torch

        from unified.measure.native import NativeFiles
        from unified.torchkit.export import save_torchscript

        # a torch.ao quantized model runs on the engine it was converted under
        quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized")
                        for m in model.modules())
        pair = NativeFiles("torchscript", self.workdir / "native.ts",
                           self.workdir / "native_reference.ts",
                           torch.backends.quantized.engine if quantized else None)
        if any(p.dtype != torch.float32 for p in model.parameters()):  # float16
            self.note("native latency not measured: the torch model takes no float32 input")
            return None
        for module, path in ((model, pair.model), (self.reference_model(), pair.reference)):
            problem = save_torchscript(module, path, self.input_shape)
            if problem is not None:
                self.note(f"native latency not measured: torch.jit.trace failed ({problem})")
                return None
        return pair


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
