"""The post-training route: optimize.coreml on the converted mlprogram, then the read-back.

Each step becomes an optimize.coreml call (linear quantization, palettization, magnitude
pruning; later ones with joint_compression). The result is evaluated by decompressing the
weights (``decompress_weights``), reading each conv/linear weight from the MIL program in
execution order, loading them into the BN-folded torch model (matched by order and shape)
and exporting that model to ONNX; the ONNX weights are then checked to equal the
decompressed Core ML weights exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from adapters.coreml import PALETTE_BITS, storage_bits
from adapters.coreml._impl_common import (
    DEFAULT_GROUP,
    _check_alignment,
    _source_op,
    _weight,
    compute_ops,
    convert,
    layers_in_order,
    load_mlpackage,
    mil_program,
)
from adapters.coreml._impl_ct import ct, cto
from unified.context import JobContext
from unified.spec.errors import ExportMismatch
from unified.spec.steps import ClusterStep, PruneStep, QuantizeStep, Step
from unified.torchkit.export import export_onnx

# --- optimize.coreml configs ----------------------------------------------------------------


def _padded_lut(k: int, bits: int, mode: str) -> Callable[[np.ndarray], tuple[Any, Any]]:
    """A custom LUT function: ``k`` entries by k-means or uniform levels, padded to 2^bits
    (Core ML has no index width for k, e.g. 5 or 7 bits)."""

    def lut_function(val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = val.reshape(-1)
        if mode == "uniform":
            lo, hi = float(flat.min()), float(flat.max())
            levels = np.linspace(lo, hi, k).astype(val.dtype)
            idx = np.round((flat - lo) / ((hi - lo) or 1.0) * (k - 1)).astype(np.uint8)
            lut = levels
        else:
            lut, idx = _kmeans(flat, k)
        pad = (1 << bits) - len(lut)
        lut = np.concatenate([np.asarray(lut).reshape(-1), np.repeat(np.asarray(lut)[-1:], pad)])
        return lut.astype(val.dtype), np.asarray(idx).reshape(-1).astype(np.uint8)

    return lut_function


def _kmeans(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means of a 1-D array with coremltools' own routine (any k up to 256)."""
    from coremltools.models.neural_network.quantization_utils import (
        _get_kmeans_lookup_table_and_weight,
    )

    unique = np.unique(flat)
    if len(unique) <= k:  # fewer values than clusters: the values are the LUT
        lut = np.concatenate([unique, np.repeat(unique[-1:], k - len(unique))])
        idx = np.searchsorted(unique, flat)
        return lut.astype(flat.dtype), idx.astype(np.uint8)
    nbits = float(np.log2(k))
    if nbits.is_integer():
        lut, idx = _get_kmeans_lookup_table_and_weight(int(nbits), flat)
        return np.asarray(lut).reshape(-1).astype(flat.dtype), np.asarray(idx).reshape(-1)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(flat.reshape(-1, 1))
    return km.cluster_centers_.reshape(-1).astype(flat.dtype), km.labels_.astype(np.uint8)


@dataclass
class CoremlOp:
    """One post-training compression: the optimize.coreml function and its op config."""

    kind: str  # prune | cluster | linear
    apply: Callable[..., ct.models.MLModel]
    config: Any
    description: str


def _palettize_granularity(granularity: str, group_size: int | None) -> dict[str, Any]:
    if granularity == "per_tensor":
        return {"granularity": "per_tensor"}
    size = 1 if granularity == "per_channel" else (group_size or DEFAULT_GROUP)
    return {"granularity": "per_grouped_channel", "group_size": size}


def coreml_op(step: Step, ctx: JobContext) -> CoremlOp | None:
    """The optimize.coreml call for a post-training step (None: fp16 conversion only)."""
    if isinstance(step, QuantizeStep):
        if step.weights == 16:
            return None
        if step.weights in (8, 4):
            kwargs: dict[str, Any] = {"granularity": str(step.granularity)}
            if step.granularity == "per_block":
                kwargs["block_size"] = DEFAULT_GROUP
                ctx.note(f"per-block linear quantization with coremltools' block_size "
                         f"{DEFAULT_GROUP} along the input channels")
            config = cto.coreml.OpLinearQuantizerConfig(
                mode="linear_symmetric" if step.symmetric else "linear",
                dtype=f"int{step.weights}", weight_threshold=0, **kwargs,
            )
            return CoremlOp("linear", cto.coreml.linear_quantize_weights, config,
                            f"linear_quantize_weights int{step.weights} {step.granularity}")
        # 2 / 1 bits: uniform palettization (evenly spaced levels) = linear quantization as a LUT
        gran = "per_channel" if step.granularity == "per_channel" else "per_tensor"
        config = cto.coreml.OpPalettizerConfig(
            mode="uniform", nbits=step.weights, weight_threshold=0,
            **_palettize_granularity(gran, None),
        )
        return CoremlOp("cluster", cto.coreml.palettize_weights, config,
                        f"palettize_weights uniform {step.weights}-bit {gran}")
    if isinstance(step, ClusterStep):
        k = step.n_clusters
        bits = storage_bits(k)
        assert bits is not None  # check_recipe rejects more than 256 clusters
        mode = "uniform" if step.init == "linear" else "kmeans"
        palette = _palettize_granularity(str(step.granularity), step.group_size)
        if step.granularity == "per_block" and step.group_size is None:
            ctx.note(f"grouped-channel palettization with coremltools' group_size {DEFAULT_GROUP}")
        if k == 1 << bits and bits in PALETTE_BITS:
            config = cto.coreml.OpPalettizerConfig(mode=mode, nbits=bits, weight_threshold=0,
                                                   **palette)
        else:
            config = cto.coreml.OpPalettizerConfig(
                mode="custom", lut_function=_padded_lut(k, bits, mode), weight_threshold=0,
                **palette,
            )
        return CoremlOp("cluster", cto.coreml.palettize_weights, config,
                        f"palettize_weights {mode} {k} entries ({bits}-bit indices) "
                        f"{palette['granularity']}")
    if isinstance(step, PruneStep):
        if step.structure == "n:m":
            assert step.n is not None and step.m is not None
            config = cto.coreml.OpMagnitudePrunerConfig(
                n_m_ratio=(step.m - step.n, step.m), dim=1, weight_threshold=0)
            text = f"prune_weights n:m keep {step.n} of {step.m}"
        else:
            config = cto.coreml.OpMagnitudePrunerConfig(
                target_sparsity=float(step.sparsity), weight_threshold=0)
            text = f"prune_weights magnitude target_sparsity {step.sparsity}"
        return CoremlOp("prune", cto.coreml.prune_weights, config, text)
    raise AssertionError(f"no post-training mapping for step {step.kind}")


# --- the post-training pipeline ---------------------------------------------------------------


def _layer_consts(prog: Any) -> list[str]:
    """Name of the const feeding each conv/linear weight, in program order."""
    names = []
    for op in compute_ops(prog):
        src = _source_op(op.inputs.get("weight"))
        names.append(src.name if src is not None else "")
    return names


def _weight_is_compressed(op: Any) -> bool:
    src = _source_op(op.inputs.get("weight"))
    return src is not None and src.op_type.startswith("constexpr_")


def run_coreml_steps(
    ctx: JobContext,
    model: nn.Module,
    steps: list[tuple[Step, CoremlOp | None]],
    fp16: bool,
) -> tuple[Path, Path, list[str]]:
    """Convert ``model`` (BN already folded), apply the optimize.coreml steps in order
    (later ones with joint_compression) and save; returns (fp32 package, compressed package,
    the torch names of the layers in MIL order)."""
    layers = layers_in_order(model, ctx.input_shape)
    fp32_package = ctx.workdir / "fp32.mlpackage"
    convert(model, ctx.input_shape, fp16=False).save(str(fp32_package))
    mlmodel = convert(model, ctx.input_shape, fp16=fp16) if fp16 else load_mlpackage(fp32_package)
    prog = mil_program(mlmodel)
    ops = compute_ops(prog)
    _check_alignment(layers, [op.inputs["weight"].shape for op in ops])
    consts = _layer_consts(prog)
    names = [name for name, _ in layers]
    did_compress = False
    for step, op in steps:
        if op is None:
            continue
        skip: dict[str, Any] = {}
        for (name, _module), const, mil_op in zip(layers, consts, ops, strict=True):
            if name not in ctx.layers_for(step):
                skip[const] = None
                skip[mil_op.name] = None
        config = cto.coreml.OptimizationConfig(global_config=op.config, op_name_configs=skip)
        mlmodel = op.apply(mlmodel, config, joint_compression=did_compress)
        ctx.note(f"optimize.coreml: {op.description}"
                 + (" (joint_compression)" if did_compress else ""))
        did_compress = True
    package = ctx.workdir / "model.mlpackage"
    mlmodel.save(str(package))
    compressed = compute_ops(mil_program(load_mlpackage(package)))
    wanted = [any(o is not None and n in ctx.layers_for(s) for s, o in steps) for n in names]
    skipped = [n for n, op, w in zip(names, compressed, wanted, strict=True)
               if w and not _weight_is_compressed(op)]
    for step, op in steps:
        if op is not None:
            ctx.report_changed(step, [n for n in ctx.layers_for(step) if n not in skipped])
    if skipped and did_compress:
        ctx.deviate("coremltools left these layers uncompressed (shape not applicable to the "
                    f"config): {', '.join(skipped)}")
    return fp32_package, package, names



def decompressed_weights(package: Path) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every conv/linear op of the decompressed program, in program order."""
    decompressed = cto.coreml.decompress_weights(load_mlpackage(package))
    out = []
    for op in compute_ops(mil_program(decompressed)):
        weight = op.inputs["weight"].val
        bias_var = op.inputs.get("bias")
        bias = bias_var.val if bias_var is not None else None
        if weight is None:
            raise ExportMismatch(f"Core ML op {op.name}: weight is not a constant after "
                                 "decompress_weights")
        out.append((np.asarray(weight), None if bias is None else np.asarray(bias)))
    return out


def load_into(layers: list[tuple[str, nn.Module]],
              weights: list[tuple[np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
    """Copy the Core ML weights (float32) into the torch layers; returns the float32 weights."""
    _check_alignment(layers, [w.shape for w, _ in weights])
    loaded = []
    with torch.no_grad():
        for (_, module), (weight, bias) in zip(layers, weights, strict=True):
            w32 = weight.astype(np.float32)
            _weight(module).copy_(torch.from_numpy(w32))
            if bias is not None:
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(_weight(module).shape[0]))
                cast(torch.Tensor, module.bias).copy_(torch.from_numpy(bias.astype(np.float32)))
            loaded.append(w32)
    return loaded


def onnx_layer_weights(path: Path) -> list[np.ndarray]:
    """Weights of Conv / Gemm / MatMul nodes in graph order, in torch layout."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = w if trans_b else w.T
        elif node.op_type == "MatMul":
            w = w.T
        out.append(w)
    return out


def check_readback(onnx_path: Path, expected: list[np.ndarray]) -> None:
    """The ONNX weights must equal the decompressed Core ML weights exactly."""
    got = onnx_layer_weights(onnx_path)
    if len(got) != len(expected):
        raise ExportMismatch(
            f"ONNX has {len(got)} conv/linear weights, the Core ML program {len(expected)}")
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a.shape != b.shape or not np.array_equal(a.astype(np.float32), b):
            raise ExportMismatch(
                f"ONNX weight {i} differs from the decompressed Core ML weight "
                f"(shape {a.shape} vs {b.shape})")


def coreml_to_onnx(ctx: JobContext, model: nn.Module, package: Path) -> tuple[Path, bool]:
    """Read the decompressed Core ML weights into ``model`` and export it to ONNX."""
    layers = layers_in_order(model, ctx.input_shape)
    expected = load_into(layers, decompressed_weights(package))
    onnx_path = ctx.workdir / "model.onnx"
    export_onnx(model, onnx_path, ctx.input_shape)
    check_readback(onnx_path, expected)
    return onnx_path, True

