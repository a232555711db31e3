"""TF-MOT on the torch reference: torch → tf_keras (nobuco) → TF-MOT → TFLite → ONNX (tf2onnx).

Pruning (``_impl_prune``), clustering and QAT run on the Keras model; post-training
quantization (static int8, dynamic range, float16) is the TFLite converter's. The ONNX is
converted from the TFLite file so the harness measures what TFLite ships (int8 kept as QDQ).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adapters.base import Artifacts
from adapters.tfmot._impl_bridge import Bridged, BridgeError, keras, torch_to_keras
from adapters.tfmot._impl_tflite import (
    nhwc,
    onnx_distinct,
    onnx_predict,
    tflite_predict,
    tflite_to_onnx,
    to_tflite,
)
from unified.spec.steps import (
    ClusterInit,
    ClusterStep,
    FinetuneStep,
    Granularity,
    OpType,
    PruneStep,
    QuantizeStep,
    QuantMethod,
    Step,
    Targets,
    prune_run,
)

# isort: split
# after the bridge: it imports torch (and triton) before TensorFlow, else a segfault
import tensorflow_model_optimization as tfmot

if TYPE_CHECKING:
    from adapters.base import Plan
    from unified.context import JobContext

__all__ = ["BridgeError", "compress"]

sparsity_api = tfmot.sparsity.keras
cluster_api = tfmot.clustering.keras
quant_api = tfmot.quantization.keras
CentroidInit = cluster_api.CentroidInitialization

BRIDGE_ATOL = 1e-3
OP_TYPE_LAYERS = {OpType.conv: "Conv2D", OpType.depthwise: "DepthwiseConv2D",
                  OpType.linear: "Dense"}
CENTROID_INIT = {
    ClusterInit.kmeans_pp: CentroidInit.KMEANS_PLUS_PLUS,
    ClusterInit.linear: CentroidInit.LINEAR,
    ClusterInit.density: CentroidInit.DENSITY_BASED,
    ClusterInit.random: CentroidInit.RANDOM,
}
NEVER = 2**31 - 1  # a mask-update frequency that never comes round again


# --- targets -------------------------------------------------------------------------------


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_layers(model: keras.Model, targets: Targets) -> list[keras.layers.Layer]:
    """Layers of ``model`` a step's targets pick: op type, then include/exclude patterns on
    the torch module name (the bridge names conv / dense layers after it)."""
    kinds = {OP_TYPE_LAYERS[t] for t in targets.op_types}
    out = []
    for layer in model.layers:
        if type(layer).__name__ not in kinds:
            continue
        if targets.include and not any(_matches(layer.name, p) for p in targets.include):
            continue
        if any(_matches(layer.name, p) for p in targets.exclude):
            continue
        out.append(layer)
    return out


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
    if ctx.data.train_y is None:
        raise ValueError("training needs labelled data")
    keras.utils.set_random_seed(ctx.seed)
    model.compile(optimizer=_optimizer(ctx, lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = nhwc(ctx.data.train_x), ctx.data.train_y.astype(np.int64)
    for epoch in range(epochs):
        if learning_rates is not None and epoch < len(learning_rates):
            model.optimizer.learning_rate.assign(learning_rates[epoch])
        order = np.random.default_rng([ctx.seed, epoch]).permutation(len(x))
        model.fit(x[order], y[order], batch_size=ctx.budget.batch_size, epochs=1,
                  shuffle=False, verbose=0, callbacks=list(callbacks or []))
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def steps_per_epoch(ctx: JobContext) -> int:
    return math.ceil(len(ctx.data.train_x) / ctx.budget.batch_size)


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


# --- cluster -------------------------------------------------------------------------------


def cluster(state: State, step: ClusterStep, ctx: JobContext, finetune_follows: bool) -> None:
    preserve_sparsity = bool(state.pruned)
    state.strip()
    layers = select_layers(state.model, step.targets)
    depthwise = [ly.name for ly in layers if type(ly).__name__ == "DepthwiseConv2D"]
    if depthwise:
        ctx.note(f"TF-MOT has no clustering for DepthwiseConv2D: kernels of "
                 f"{', '.join(depthwise)} left unclustered")
    names = [ly.name for ly in layers if ly.name not in depthwise]
    if not names:
        raise ValueError("the cluster step's targets select no Conv2D / Dense layer")
    n = step.n_clusters
    init = CENTROID_INIT[step.init]
    per_channel = step.granularity is Granularity.per_channel

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        return cluster_api.cluster_weights(
            layer, number_of_clusters=n, cluster_centroids_init=init,
            preserve_sparsity=preserve_sparsity,
            cluster_per_channel=per_channel and type(layer).__name__ == "Conv2D")

    state.model = rewrap(state.model, wrap, set(names))
    state.cluster_wrapped = True
    state.clustered = names
    ctx.note(f"TF-MOT cluster_weights({n} clusters, {init}) on {len(names)} layers"
             + (" preserving sparsity" if preserve_sparsity else ""))
    if finetune_follows:
        ctx.note("clustering fine-tuned by the recipe's finetune step")
        return
    epochs = ctx.budget.finetune_epochs
    lr = train_lr(state, ctx)
    if epochs:
        ctx.note(f"clustered model fine-tuned {epochs} epoch(s) at lr {lr:g} (TF-MOT's usage)")
    train(state.model, ctx, epochs, lr)


# --- quantize ------------------------------------------------------------------------------


def qat(state: State, step: QuantizeStep, ctx: JobContext) -> None:
    preserve_prune = bool(state.pruned)
    preserve_cluster = bool(state.clustered)
    state.strip()
    model = state.model
    if preserve_cluster:
        scheme = tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity=preserve_prune)
        scheme_name = "cluster-preserving QAT" + (" (and sparsity)" if preserve_prune else "")
    elif preserve_prune:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
        scheme_name = "pruning-preserving QAT"
    else:
        scheme = quant_api.default_8bit.Default8BitQuantizeScheme()
        scheme_name = "QAT (Default8BitQuantizeScheme)"
    registry = scheme.get_quantize_registry()  # what this scheme can wrap
    targets = {ly.name for ly in select_layers(model, step.targets)}
    weighted = {"Conv2D", "DepthwiseConv2D", "Dense"}
    annotate, skipped = set(), []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in weighted and layer.name not in targets:
            continue
        if kind in ("InputLayer", "Identity", "Dropout"):  # no-ops: nothing to quantize
            continue
        if registry.supports(layer):
            annotate.add(layer.name)
        # BN after a conv is folded by quantize_apply's Conv+BN(+ReLU) transforms
        elif kind != "BatchNormalization":
            skipped.append(f"{layer.name} ({kind})")
    annotated = rewrap(model, quant_api.quantize_annotate_layer, annotate)
    with quant_api.quantize_scope():
        state.model = quant_api.quantize_apply(annotated, scheme)
    state.qat = True
    ctx.note(f"TF-MOT {scheme_name} on {len(annotate)} layers; Conv2D/Dense per-channel / "
             "per-tensor int8 as TF-MOT's default 8-bit scheme does")
    if skipped:
        ctx.note(f"TF-MOT QAT left in float: {', '.join(skipped)}")
    epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
    lr = ctx.budget.effective_finetune_lr
    ctx.note(f"QAT trained {epochs} epoch(s) at lr {lr:g}")
    rates = ctx.learning_rates(lr, epochs, "QAT")
    train(state.model, ctx, epochs, lr, learning_rates=rates)


# --- the job -------------------------------------------------------------------------------


def fold_batchnorm(model: keras.Model) -> tuple[keras.Model, list[str]]:
    """Fold each BatchNormalization that directly follows a conv / dense layer (its only
    consumer) into that layer; the BN becomes an Identity. Clustering needs it: TFLite folds
    BN into the kernel, scaling each output channel of a clustered kernel differently."""
    folded: dict[str, list[np.ndarray]] = {}
    bn_names: set[str] = set()
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
            continue
        producers = layer._inbound_nodes[0].inbound_layers
        prev = producers if not isinstance(producers, list) else (
            producers[0] if len(producers) == 1 else None)
        kind = type(prev).__name__
        if prev is None or kind not in ("Conv2D", "DepthwiseConv2D", "Dense") or len(
                prev._outbound_nodes) != 1:
            continue
        gamma, beta, mean, var = (w.numpy() for w in (
            layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))
        if gamma is None or beta is None or layer.axis not in ([3], [-1], 3, -1):
            continue
        scale = gamma / np.sqrt(var + layer.epsilon)
        kernel = _kernel(prev)
        if kind == "DepthwiseConv2D":  # (kh, kw, cin, multiplier): output channel = cin*m + j
            cin, mult = kernel.shape[2:]
            kernel = kernel * scale.reshape(1, 1, cin, mult)
        else:
            kernel = kernel * scale
        bias = prev.bias.numpy() if prev.use_bias else np.zeros_like(mean)
        folded[prev.name] = [kernel.astype(np.float32),
                             ((bias - mean) * scale + beta).astype(np.float32)]
        bn_names.add(layer.name)

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in folded:
            return type(layer).from_config({**layer.get_config(), "use_bias": True})
        if layer.name in bn_names:
            return keras.layers.Identity(name=layer.name)
        return layer

    if not folded:
        return model, []
    out = keras.models.clone_model(model, clone_function=clone)
    for name, weights in folded.items():
        out.get_layer(name).set_weights(weights)
    return out, sorted(folded)


def compress(ctx: JobContext, plan: Plan) -> Artifacts:
    """Run the recipe with TF-MOT; write model.tflite and model.onnx in ctx.workdir."""
    steps: list[Step] = list(ctx.recipe.steps)
    details: dict[str, Any] = {}
    torch_model = ctx.reference_model()
    check_x = ctx.data.test_x[:64]
    bridged: Bridged = torch_to_keras(torch_model, ctx.input_shape, check_x, atol=BRIDGE_ATOL)
    details["bridge_max_abs_diff"] = bridged.max_abs_diff
    if bridged.shape_traced:
        ctx.note("torch→Keras bridge: the model's shapes depend on the batch size (e.g. a "
                 "token expanded to it), so nobuco traced the shape arithmetic into the Keras "
                 "graph (trace_shape)")
    if bridged.nonstandard:
        details["bridge_nonstandard_layers"] = bridged.nonstandard
        ctx.note(f"torch→Keras bridge left non-standard layers: {', '.join(bridged.nonstandard)}")
    model = bridged.model
    qat_follows = any(isinstance(s, QuantizeStep) and s.method is QuantMethod.qat for s in steps)
    if any(isinstance(s, ClusterStep) for s in steps) and qat_follows:
        # quantize_apply cannot wrap the Identity left by folding: QAT folds BN itself
        ctx.note("BatchNorm kept for cluster-preserving QAT (QAT folds it): the int8 kernels "
                 "share values per output channel, not per tensor")
    elif any(isinstance(s, ClusterStep) for s in steps):
        model, folded = fold_batchnorm(model)
        if folded:
            with torch.no_grad():
                expected = torch_model(torch.from_numpy(check_x)).numpy()
            diff = float(np.abs(model(nhwc(check_x), training=False).numpy() - expected).max())
            if diff > BRIDGE_ATOL:
                raise BridgeError(f"BatchNorm folding changed the outputs by {diff:.3g}")
            details["bn_fold_max_abs_diff"] = diff
            ctx.note("BatchNorm folded into the preceding conv/dense before clustering, so the "
                     "shared values survive TFLite's BN folding")
    state = State(model, bn_folded="bn_fold_max_abs_diff" in details)
    done: set[int] = set()
    from adapters.tfmot._impl_prune import prune

    for i, step in enumerate(steps):
        later = steps[i + 1:]
        if i in done:
            continue
        if isinstance(step, PruneStep):
            # i is the run's first step
            group = [(j, s) for j in prune_run(steps, i) if isinstance(s := steps[j], PruneStep)]
            done.update(j for j, _ in group)
            prune(state, group, ctx)
        elif isinstance(step, ClusterStep):
            follows = bool(later) and isinstance(later[0], FinetuneStep)
            cluster(state, step, ctx, follows)
        elif isinstance(step, QuantizeStep):
            if step.method is QuantMethod.qat:
                qat(state, step, ctx)
            else:
                state.strip()
                state.ptq = step
        elif isinstance(step, FinetuneStep):
            epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
            lr = train_lr(state, ctx)
            callbacks = [sparsity_api.UpdatePruningStep()] if state.prune_wrapped else []
            names = state.pruned

            def log(epoch: int, names: list[str] = names) -> None:
                if names:
                    ctx.epoch_log.append({"epoch": epoch, "step": "finetune", "sparsity": round(
                        kernel_sparsity(state.model, names), 6)})

            train(state.model, ctx, epochs, lr, callbacks=callbacks, on_epoch_end=log)
        else:  # the plan rejects these before compress is called
            raise BridgeError(f"the tfmot backend has no {step.kind} step")
    state.strip()
    if state.pruned_sparsity is not None:
        details["pruned_kernel_sparsity"] = state.pruned_sparsity
    if state.clustered_distinct is not None:
        details["clustered_layers"] = state.clustered
        details["clustered_max_distinct"] = state.clustered_distinct

    native = ctx.workdir / "model.tflite"
    native.write_bytes(to_tflite(state.model, state.ptq, state.qat, ctx.data.calib_x))
    onnx_path = ctx.workdir / "model.onnx"
    tflite_to_onnx(native, onnx_path)

    if state.clustered:
        details["onnx_clustered_distinct"] = onnx_distinct(onnx_path, state.clustered)

    # Faithfulness: the ONNX must say what the TFLite file says.
    test_x = ctx.data.test_x
    lite = tflite_predict(native, nhwc(test_x))
    onnx_logits = onnx_predict(onnx_path, test_x)
    details["tflite_onnx_agreement"] = float((lite.argmax(1) == onnx_logits.argmax(1)).mean())
    details["tflite_onnx_max_abs_diff"] = float(np.abs(lite - onnx_logits).max())
    return Artifacts(onnx_path=onnx_path, native_path=native, details=details)
