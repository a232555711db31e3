"""TF-MOT quantization-aware training: the default 8-bit scheme, or the pruning- / cluster-
preserving schemes when an earlier step pruned or clustered the kernels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.tfmot._impl_common import State, quant_api, rewrap, select_layers, tfmot, train
from unified.spec.steps import Granularity, QuantizeStep

if TYPE_CHECKING:
    from unified.context import JobContext



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
    targets = {ly.name for ly in select_layers(model, ctx.layers_for(step))}
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
    ctx.report_changed(step, [name for name in ctx.layers_for(step) if name in annotate])
    if skipped:
        ctx.deviate(f"TF-MOT QAT cannot quantize these layers and leaves them in float: "
                    f"{', '.join(skipped)}")
    dense = sorted(name for name in annotate & targets
                   if type(model.get_layer(name)).__name__ == "Dense")
    if dense and step.granularity is Granularity.per_channel:
        ctx.deviate(f"TF-MOT's 8-bit QAT scheme quantizes Dense kernels per-tensor although "
                    f"per_channel was asked: {', '.join(dense)}")
    epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
    lr = ctx.budget.effective_finetune_lr
    ctx.note(f"QAT trained {epochs} epoch(s) at lr {lr:g}")
    rates = ctx.learning_rates(lr, epochs, "QAT")
    train(state.model, ctx, epochs, lr, learning_rates=rates)

