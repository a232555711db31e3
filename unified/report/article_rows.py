"""What the seed article's claims are judged on: which article technique a recipe is, the
verdict tolerances, the figures' formatting, and the run's measured records per model.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unified.spec.steps import (
    BinarizeStep,
    ClusterStep,
    FinetuneStep,
    PruneStep,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Recipe,
)

if TYPE_CHECKING:
    from unified.spec.scenario import ModelSpec, Scenario

MEASURED = ("ok", "approximated")
AGREES, PARTLY, DIFFERS, NA = "agrees", "partly", "differs", "n/a"
# Reuse the report's status colours for verdicts.
VERDICT_CLASS = {AGREES: "ok", PARTLY: "approximated", DIFFERS: "failed", NA: "unsupported"}

# The article's three torchvision architectures; whether they end in a Linear layer decides
# what PyTorch dynamic quantization (Linear/LSTM/RNN only) can shrink.
ARCHITECTURES = {
    "mobilenet_v2": ("MobileNetV2", True),
    "resnet50": ("ResNet50", True),
    "squeezenet1_1": ("SqueezeNet1.1", False),
}

# Tolerances of the verdicts; latency on a shared CPU is noisy, sizes are exact.
SIZE_SAME = (0.95, 1.05)  # "no size gain"
SPEED_SAME = (0.8, 1.25)  # "no speed gain"
NO_SHRINK = (0.99, 1.01)  # dynamic quantization of a model without Linear layers
LITTLE_SHRINK = (1.005, 1.6)  # one Linear layer of a CNN
STATIC_SIZE = (3.0 * 0.95, 4.0 * 1.05)  # "3–4× smaller", 5% slack for graph overhead
STATIC_SPEED = (1.2, 3.0)
KEEPS_ACCURACY = 0.01  # accuracy drop that still counts as "keeps accuracy"
QAT_TIE = 0.002
PROPORTIONAL = 0.2  # weight file within 20% of 32/bits counts as "in proportion"
SHARING_SIZE = (10.0, 15.0)
BAD_DROP = 0.05
CHANCE_FACTOR = 2.0  # a reference below 2× chance accuracy did not learn: no accuracy verdicts


@dataclass(frozen=True)
class RecipeKind:
    """What an article claim needs to know about a recipe."""

    kind: str  # dynamic | static | qat | prune | weights | cluster | binarize
    bits: float | None = None
    label: str = ""


def classify(recipe: Recipe) -> RecipeKind | None:
    """The article technique a recipe is an instance of, or None (e.g. mixed recipes)."""
    steps = recipe.steps
    if any(isinstance(s, BinarizeStep) for s in steps):
        return RecipeKind("binarize", 1, "binarize")
    core = [s for s in steps if not isinstance(s, FinetuneStep)]
    if core and all(isinstance(s, PruneStep) for s in core):
        first = core[0]
        assert isinstance(first, PruneStep)
        return RecipeKind("prune", None,
                          f"{first.structure.value} {first.scope.value} {first.sparsity:g}")
    if len(steps) != 1:
        return None
    step = steps[0]
    if isinstance(step, ClusterStep):
        bits = step.bits if step.bits is not None else (
            math.log2(step.clusters) if step.clusters else None)
        return RecipeKind("cluster", bits, f"{2 ** bits:g} clusters" if bits else "clusters")
    if not isinstance(step, QuantizeStep):
        return None
    if step.method == QuantMethod.qat:
        return RecipeKind("qat", step.weights, "QAT")
    if step.activations is None:
        bits = 16 if step.dtype == QuantDType.float16 else step.weights
        return RecipeKind("weights", bits, f"{bits}-bit weights")
    if step.method == QuantMethod.dynamic:
        return RecipeKind("dynamic", step.weights, "dynamic")
    if step.weights == 8 and step.activations == 8:
        return RecipeKind("static", 8, "static int8")
    return None


# --- formatting --------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _acc(record: dict[str, Any]) -> str:
    acc, drop = record.get("accuracy"), record.get("accuracy_drop")
    if acc is None:
        return "acc –"
    return f"acc {acc:.3f}" + (f" (drop {drop:+.3f})" if drop is not None else "")


def _inside(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def _weight_factor(record: dict[str, Any]) -> tuple[float | None, str]:
    """How many times smaller the stored weights are: the Core ML weight file ratio when
    the adapter reported it, else fp32 ONNX / native artifact."""
    ratio = (record.get("details") or {}).get("weight_file_ratio")
    if ratio:
        return 1.0 / float(ratio), "weight file"
    return record.get("native_ratio"), "native"


def _best_storage(record: dict[str, Any]) -> tuple[float | None, str]:
    """The largest of the size ratios (ONNX, native artifact, gzip of the ONNX)."""
    options = [(record.get(f), name) for f, name in
               (("size_ratio", "ONNX"), ("native_ratio", "native"), ("gzip_ratio", "gzip"))]
    present = [(v, n) for v, n in options if v is not None]
    return max(present) if present else (None, "")


def _size_speed(record: dict[str, Any]) -> str:
    """ONNX size and speed ratios, plus the native artifact's when it tells more (Core ML
    weights-only rows: the ONNX carries decompressed float weights)."""
    size, native = record.get("size_ratio"), record.get("native_ratio")
    text = f"size {_x(size)}"
    if native is not None and (size is None or abs(native / size - 1) > 0.05):
        text += f" (native {_x(native)})"
    return text + f", speed {_x(record.get('speedup'))}"



# --- the records of a model ------------------------------------------------------------


@dataclass
class ModelRows:
    """The records of one model, grouped by article technique."""

    label: str
    spec: ModelSpec
    by_kind: dict[str, list[tuple[RecipeKind, dict[str, Any]]]]
    fp32_bytes: float | None
    reference_accuracy: float | None = None
    unmeasured: list[tuple[RecipeKind, dict[str, Any]]] | None = None  # failed / timeout

    @property
    def arch(self) -> tuple[str, bool] | None:
        name = self.spec.source.partition(":")[2]
        return ARCHITECTURES.get(name) if self.spec.source.startswith("torchvision:") else None

    @property
    def trained(self) -> bool:
        """Accuracy means something only for trained (or loaded) weights on labelled data
        whose fp32 reference beats chance clearly."""
        if self.spec.weights == "random":
            return False
        acc = self.reference_accuracy
        return acc is None or acc > CHANCE_FACTOR / self.spec.num_classes

    def rows(self, kind: str, backend: str | None = None) -> list[tuple[RecipeKind, dict]]:
        return [(k, r) for k, r in self.by_kind.get(kind, [])
                if backend is None or r["backend"] == backend]


Verdict = tuple[str, str]  # (verdict, why)
Claim = tuple[str, Callable[[ModelRows], tuple[str, Verdict] | None]]


def _others(rows: Iterable[tuple[RecipeKind, dict[str, Any]]], skip: str,
            fmt: Callable[[dict[str, Any]], str]) -> str:
    parts = [f"{r['backend']}: {fmt(r)}" for _, r in rows if r["backend"] != skip]
    return ("<br><small>other toolkits: " + html.escape("; ".join(parts)) + "</small>"
            if parts else "")


def model_rows(records: list[dict[str, Any]], scenario: Scenario) -> list[ModelRows]:
    """The run's measured records, per model (in scenario order) and technique."""
    kinds = {name: classify(recipe) for name, recipe in scenario.recipes.items()}
    out = []
    for view in scenario.views():
        label = view.model.label
        mine = [r for r in records if r.get("model") in (label, None)
                or len(scenario.views()) == 1]
        by_kind: dict[str, list[tuple[RecipeKind, dict[str, Any]]]] = {}
        fp32 = ref_acc = None
        unmeasured = []
        for r in mine:
            if r.get("status") not in MEASURED:
                kind = kinds.get(r.get("recipe", ""))
                if kind is not None and r.get("status") in ("failed", "timeout"):
                    unmeasured.append((kind, r))
                continue
            if fp32 is None and r.get("onnx_bytes") and r.get("size_ratio"):
                fp32 = r["onnx_bytes"] * r["size_ratio"]
            drop = r.get("accuracy_drop_vs_reference")
            drop = r.get("accuracy_drop") if drop is None else drop
            if ref_acc is None and r.get("accuracy") is not None and drop is not None:
                ref_acc = r["accuracy"] + drop  # drop = fp32 reference - this
            kind = kinds.get(r.get("recipe", ""))
            if kind is not None:
                by_kind.setdefault(kind.kind, []).append((kind, r))
        out.append(ModelRows(label, view.model, by_kind, fp32, ref_acc, unmeasured))
    return out

