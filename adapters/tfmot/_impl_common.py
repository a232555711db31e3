"""What every TF-MOT step shares: the TF-MOT APIs, layer selection and re-wrapping, Keras
training with the shared budget, and the state of the Keras model through the recipe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adapters.tfmot._impl_bridge import keras
from adapters.tfmot._impl_tflite import nhwc
from unified.spec.steps import OpType, QuantizeStep

# isort: split
# after the bridge: it imports torch (and triton) before TensorFlow, else a segfault
import tensorflow_model_optimization as tfmot

if TYPE_CHECKING:
    from unified.context import JobContext

sparsity_api = tfmot.sparsity.keras
cluster_api = tfmot.clustering.keras
quant_api = tfmot.quantization.keras

LAYER_OP_TYPES = {"Conv2D": OpType.conv, "DepthwiseConv2D": OpType.depthwise,
                  "Dense": OpType.linear}
NEVER = 2**31 - 1  # a mask-update frequency that never comes round again


# --- targets -------------------------------------------------------------------------------


def select_layers(model: keras.Model, names: tuple[str, ...]) -> list[keras.layers.Layer]:
    """Layers of ``model`` a step's resolved targets name (torch module names: the bridge
    names conv / dense layers after them), in model order."""
    wanted = set(names)
    return [layer for layer in model.layers
            if layer.name in wanted and type(layer).__name__ in LAYER_OP_TYPES]


def rewrap(model: keras.Model, wrap: Callable[[keras.layers.Layer], keras.layers.Layer],
            names: set[str]) -> keras.Model:
    """Clone the functional graph, wrapping the named layers (others are reused as is,
    keeping their weights, as TF-MOT's own examples do)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return wrap(layer) if layer.name in names else layer

    return keras.models.clone_model(model, clone_function=clone)


# --- training ------------------------------------------------------------------------------


def _optimizer(ctx: JobContext, lr: float) -> Any:
    """The budget's optimizer in Keras. Keras applies weight decay decoupled (w -= lr*wd*w)
    where torch adds wd*w to the gradient; with SGD they differ only through momentum."""
    budget = ctx.budget
    if budget.optimizer.value == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=budget.weight_decay or None)
    return keras.optimizers.SGD(learning_rate=lr, momentum=budget.momentum,
                                weight_decay=budget.weight_decay or None)


def train(model: keras.Model, ctx: JobContext, epochs: int, lr: float,
          callbacks: list[Any] | None = None,
          on_epoch_end: Callable[[int], None] | None = None,
          learning_rates: Sequence[float] | None = None) -> None:
    """Fine-tune ``model`` in place with the shared budget: the same per-epoch sample order
    as torchkit.training (``default_rng([seed, epoch])``), batch size and lr."""
    if epochs <= 0:
        return
    keras.utils.set_random_seed(ctx.seed)
    model.compile(optimizer=_optimizer(ctx, lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = nhwc(ctx.data.train_x), ctx.data.labels.astype(np.int64)
    for epoch in range(epochs):
        if learning_rates is not None and epoch < len(learning_rates):
            model.optimizer.learning_rate.assign(learning_rates[epoch])
        order = np.random.default_rng([ctx.seed, epoch]).permutation(len(x))
        model.fit(x[order], y[order], batch_size=ctx.budget.batch_size, epochs=1,
                  shuffle=False, verbose=0, callbacks=list(callbacks or []))
        if on_epoch_end is not None:
            on_epoch_end(epoch)


# --- state of the Keras model through the recipe -------------------------------------------


@dataclass
class State:
    model: keras.Model
    pruned: list[str] = field(default_factory=list)  # layer names with pruning masks
    clustered: list[str] = field(default_factory=list)
    prune_wrapped: bool = False
    cluster_wrapped: bool = False
    qat: bool = False
    ptq: QuantizeStep | None = None
    bn_folded: bool = False  # BN folded away: training needs a smaller lr (see cluster)

    pruned_sparsity: float | None = None  # measured when the wrappers come off
    clustered_distinct: int | None = None

    def strip(self) -> None:
        """Remove training wrappers (masks / centroids stay baked into the kernels) and
        measure what they left, before a later QAT wrapper hides the kernels."""
        if self.prune_wrapped:
            self.model = sparsity_api.strip_pruning(self.model)
            self.prune_wrapped = False
            self.pruned_sparsity = round(kernel_sparsity(self.model, self.pruned), 6)
        if self.cluster_wrapped:
            self.model = cluster_api.strip_clustering(self.model)
            self.cluster_wrapped = False
            self.clustered_distinct = max(
                int(np.unique(_kernel(ly)).size) for ly in self.model.layers
                if ly.name in self.clustered)


def train_lr(state: State, ctx: JobContext) -> float:
    """The budget's fine-tune lr; a tenth of it once BatchNorm is folded away (measured: the
    BN-free network diverges to chance accuracy in one epoch at the budget's lr)."""
    lr = ctx.budget.effective_finetune_lr
    if state.bn_folded:
        ctx.note(f"fine-tuned at lr {lr / 10:g}, a tenth of the budget's {lr:g}: without "
                 "BatchNorm (folded for clustering) the network diverges at the budget's lr")
        return lr / 10
    return lr


def _kernel(layer: keras.layers.Layer) -> np.ndarray:
    inner = getattr(layer, "layer", layer)
    weight = getattr(inner, "depthwise_kernel", None)
    if weight is None:
        weight = inner.kernel
    return np.asarray(weight.numpy())


def kernel_sparsity(model: keras.Model, names: list[str]) -> float:
    """Share of zeros over the kernels of the named layers (wrapped or not)."""
    zeros = total = 0
    for layer in model.layers:
        inner_name = getattr(getattr(layer, "layer", None), "name", None)
        if layer.name in names or inner_name in names:
            k = _kernel(layer)
            zeros += int((k == 0).sum())
            total += k.size
    return zeros / total if total else 0.0

