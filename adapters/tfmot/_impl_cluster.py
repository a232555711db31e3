"""TF-MOT clustering (cluster_weights on the Keras model) and the BatchNorm folding it needs
before TFLite conversion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from adapters.tfmot._impl_bridge import keras
from adapters.tfmot._impl_common import (
    State,
    _kernel,
    cluster_api,
    rewrap,
    select_layers,
    train,
    train_lr,
)
from unified.spec.steps import ClusterInit, ClusterStep, Granularity

if TYPE_CHECKING:
    from unified.context import JobContext

CentroidInit = cluster_api.CentroidInitialization
CENTROID_INIT = {
    ClusterInit.kmeans_pp: CentroidInit.KMEANS_PLUS_PLUS,
    ClusterInit.linear: CentroidInit.LINEAR,
    ClusterInit.density: CentroidInit.DENSITY_BASED,
    ClusterInit.random: CentroidInit.RANDOM,
}



def cluster(state: State, step: ClusterStep, ctx: JobContext, finetune_follows: bool) -> None:
    preserve_sparsity = bool(state.pruned)
    state.strip()
    layers = select_layers(state.model, ctx.layers_for(step))
    depthwise = [ly.name for ly in layers if type(ly).__name__ == "DepthwiseConv2D"]
    if depthwise:
        ctx.deviate(f"TF-MOT has no clustering for DepthwiseConv2D: kernels of "
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
    ctx.report_changed(step, names)
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

